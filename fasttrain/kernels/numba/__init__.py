"""Numba kernels (CPU, parallel=True, cache=True): the same op names and signatures as the
reference (docs/KERNELS.md). Imported only when the numba backend is used, so `import fasttrain`
never imports numba. Threads follow the package's single setting."""
import numba

from ... import settings

numba.set_num_threads(min(settings.num_threads, numba.config.NUMBA_NUM_THREADS))
