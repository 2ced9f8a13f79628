"""Shared helpers of the numba-cuda kernels (fasttrain/kernels/numba/cuda_*.py).

These kernels are an alternative to the CUDA C++ backend for the bench comparison "numba-cuda vs
CUDA C++"; they are not registered as a backend (the cuda backend is fasttrain._cuda). They take
CuPy arrays (anything with __cuda_array_interface__, viewed with numba.cuda.as_cuda_array); NumPy
arrays are passed through, which is what the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) runs on.
"""
from numba import cuda

THREADS = 256


def dev(a):
    """A device view of `a` (no copy); a NumPy array is returned as is (simulator)."""
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a).reshape(-1) if a.ndim != 1 else cuda.as_cuda_array(a)
    return a.reshape(-1)


def dev_nd(a, shape):
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a.reshape(shape))
    return a.reshape(shape)


def stream_of(stream):
    """The launch stream: 0 is the default stream, otherwise a raw cudaStream_t handle (as CuPy's
    `cupy.cuda.get_current_stream().ptr`), like the trailing `stream` argument of fasttrain._cuda."""
    return cuda.external_stream(stream) if stream else 0


def grid(n):
    # grid-stride loops cover any n; cap the grid so tiny launches stay tiny and big ones fill the GPU
    return max(1, min((n + THREADS - 1) // THREADS, 65535))
