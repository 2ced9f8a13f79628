"""Numba kernels (CPU parallel, and CUDA via numba-cuda). Imported only when the numba backend
is asked for, so `import fasttrain` never imports numba."""
