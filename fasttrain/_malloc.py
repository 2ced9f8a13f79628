"""Keep freed memory in the process, so each training step's arrays reuse the last step's pages.

A training step allocates its activations and gradients (megabytes each at batch 128) and frees
them all by the next step. glibc's malloc serves such large requests with mmap and unmaps them on
free (or trims them off the heap's top), so every step faults all its pages in again: resnet8 at
batch 128 took ~2300 minor faults and 6-8 ms of kernel (sys) CPU time per step, about a sixth of
the step, all spent zeroing pages the previous step had just given back (measured with
bench/dev/step_overhead.py). Raising the mmap and trim thresholds keeps large blocks on the heap,
where a freed block is simply reused: the faults drop to ~50 per step and the peak resident size
does not grow (the step's high-water mark is the same; the memory is just not returned in between).

Applied once, when the C++ backend loads (the backend whose steps this was measured on). It is a
process-wide malloc setting, so it is left alone when the user chose glibc's thresholds (the
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ variables or GLIBC_TUNABLES), and it does nothing
off glibc (where mallopt is missing or ignores these parameters).
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1   # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
#: requests up to this size come from the heap, and this much free memory may stay at its top
_THRESHOLD = 1 << 30
#: the largest mmap threshold glibc versions that cap it accept (HEAP_MAX_SIZE / 2 on 64-bit)
_THRESHOLD_CAPPED = 32 << 20
_USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

applied = False   # whether retain_freed_memory changed the thresholds in this process


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); True if they were set."""
    global applied
    if applied:
        return True
    if not sys.platform.startswith("linux") or any(v in os.environ for v in _USER_VARS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_CAPPED)):
        return False
    applied = bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    return applied
