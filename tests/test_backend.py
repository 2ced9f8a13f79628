import numpy as np
import pytest

import fasttrain as ft
from fasttrain import backend


def test_backends_reports_every_backend_with_a_reason():
    info = ft.backends()
    assert set(info) == {"cpp", "numba", "numpy", "cuda"}
    assert info["numpy"] == "available"
    for name, status in info.items():
        assert status == "available" or len(status) > 10, (name, status)


def test_unknown_backend_and_op_raise():
    with pytest.raises(ValueError, match="expected one of"):
        ft.set_backend("fortran")
    with pytest.raises(KeyError, match="unknown op"):
        backend.kernel("no_such_op")


def test_missing_backend_by_name_raises():
    if ft.backends()["cuda"] == "available":
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="not available"):
        ft.set_backend("cuda")


def test_float64_runs_the_reference_and_rejects_named_fast_backends():
    x = np.linspace(-1, 1, 11)
    y = np.empty_like(x)
    backend.kernel("relu_fwd", like=x)(x, y)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    with pytest.raises(TypeError, match="expected float32"):
        backend.kernel("relu_fwd", like=x, backend="cpp")


def test_set_backend_changes_dispatch():
    x = np.ones(3, np.float32)
    try:
        ft.set_backend("numpy")
        from fasttrain.kernels import activations

        assert backend.kernel("relu_fwd", like=x) is activations.relu_fwd_ref
    finally:
        ft.set_backend("auto")


def test_build_info_names_what_was_built():
    info = ft.build_info()
    for key in ("cpp", "cuda", "numba", "mpi", "threads"):
        assert key in info
    assert isinstance(info["cpp"], dict) and info["cpp"]["openmp"]


def test_import_does_not_import_numba_or_mpi():
    import subprocess
    import sys

    code = "import sys, fasttrain; print('numba' in sys.modules, 'mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
