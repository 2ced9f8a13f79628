"""fasttrain/_malloc.py: once the C++ backend loads, a large block freed and allocated again reuses
its pages (no page faults), unless the user set glibc's thresholds, which are then left alone."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("fasttrain._C", reason="C++ module not built")
if not sys.platform.startswith("linux"):
    pytest.skip("glibc's mallopt: Linux only", allow_module_level=True)

# 3 MB: above glibc's initial mmap threshold (128 KB), below NumPy's huge-page hint (4 MB), so
# an unmapped-and-mapped-again block faults in all its 768 pages each time
PROBE = """
import resource
import numpy as np
import fasttrain as ft
from fasttrain import _malloc
ft.set_backend("cpp")
faults = []
for i in range(6):
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(3 << 18, np.float32)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    del a
print(int(_malloc.applied), sum(faults[3:]))
"""


def _probe(**env):
    env = {**{k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                                                "GLIBC_TUNABLES")}, **env}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = map(int, out.stdout.split())
    return applied, faults


def test_freed_blocks_are_reused_without_faults():
    applied, faults = _probe()
    assert applied == 1
    assert faults < 200, f"{faults} page faults for 3 reallocations of a 3 MB block"


def test_user_thresholds_are_left_alone():
    applied, faults = _probe(MALLOC_MMAP_THRESHOLD_="131072")
    assert applied == 0
    assert faults > 3 * 600, f"only {faults} page faults: the block was not unmapped as the user asked"
