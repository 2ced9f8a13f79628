"""The instruction sets the C++ kernels can be forced to (set_conv2d_isa picks the direct
convolution's and the blocked layout's kernels): pytest params that skip the ones this CPU or
build lacks, and the fixture body that forces one for a test and restores 'auto'."""
import pytest


def isa_available(C, name):
    try:
        C.set_conv2d_isa(name)
    except ValueError:
        return False
    finally:
        C.set_conv2d_isa("auto")
    return True


def isa_params(C):
    return [pytest.param(n, marks=pytest.mark.skipif(not isa_available(C, n), reason=f"no {n} on this CPU/build"))
            for n in ("avx512", "avx2", "portable")]


def forced_isa(C, name):
    """Generator for a fixture: the named instruction set for the test, then 'auto' again."""
    C.set_conv2d_isa(name)
    yield name
    C.set_conv2d_isa("auto")
