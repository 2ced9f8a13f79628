"""Data: bundled digits, synthetic CIFAR, file-format loaders on small files written here (and
malformed ones), DataLoader shuffling and prefetching."""
import gzip
import struct

import numpy as np
import pytest

from fasttrain.data import (DataLoader, load_cifar10_batches, load_dataset, load_digits_dataset,
                            load_mnist, load_mnist_idx, load_npz, stratified_split, synthetic_cifar)


# -- digits and splits --------------------------------------------------------------------------
def test_digits_shapes_range_and_stratified_split():
    ds = load_digits_dataset(val_fraction=0.2, seed=0)
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64
    assert len(ds.x_train) + len(ds.x_val) == 1797
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.max() > 0.9
    # every class keeps its share (within one example) in the validation split
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_val]), minlength=10)
    assert np.all(np.abs(np.bincount(ds.y_val, minlength=10) - 0.2 * counts) <= 1)


def test_split_is_a_partition_and_deterministic():
    y = np.repeat(np.arange(3), [5, 7, 11])
    tr, va = stratified_split(y, 0.3, seed=4)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(y)))
    tr2, va2 = stratified_split(y, 0.3, seed=4)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(y, 1.0)


def test_synthetic_cifar_deterministic_and_learnable():
    x, y = synthetic_cifar(300, seed=1)
    assert x.shape == (300, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    x2, y2 = synthetic_cifar(300, seed=1)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(synthetic_cifar(300, seed=2)[0], x)
    # classes are shared across seeds: nearest class mean from seed 1 classifies seed 2 well
    xv, yv = synthetic_cifar(300, seed=2)
    means = np.stack([x[y == c].mean(0).ravel() for c in range(10)])
    pred = np.argmin(((xv.reshape(300, 1, -1) - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == yv).mean() > 0.5


# -- MNIST IDX ----------------------------------------------------------------------------------
def _idx_bytes(a: np.ndarray, code=0x08) -> bytes:
    return bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(a.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_roundtrip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    suffix = ".gz" if compress else ""
    pi, pl = tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}"
    write = gzip.compress if compress else (lambda b: b)
    pi.write_bytes(write(_idx_bytes(images)))
    pl.write_bytes(write(_idx_bytes(labels)))
    assert np.array_equal(load_mnist_idx(pi), images)
    x, y = load_mnist(pi, pl)
    assert x.shape == (7, 1, 5, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-6)
    assert np.array_equal(y, labels) and y.dtype == np.int64


def test_mnist_idx_big_endian_int32(tmp_path):
    a = np.array([[1, -2, 70000]], dtype=np.int32)
    p = tmp_path / "ints"
    p.write_bytes(_idx_bytes(a, code=0x0C))
    assert np.array_equal(load_mnist_idx(p), a)


@pytest.mark.parametrize("raw, match", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "type code"),
    (b"\x00\x00\x08\x02\x00\x00", "truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "bytes"),
    (b"\x1f\x8bnot really gzip", "gzip"),
])
def test_mnist_idx_malformed(tmp_path, raw, match):
    p = tmp_path / "bad"
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=match):
        load_mnist_idx(p)


def test_mnist_mismatched_counts_and_missing(tmp_path):
    (tmp_path / "i").write_bytes(_idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    (tmp_path / "l").write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="labels"):
        load_mnist(tmp_path / "i", tmp_path / "l")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_mnist_idx(tmp_path / "nope")


# -- CIFAR-10 binary ----------------------------------------------------------------------------
def test_cifar10_binary_layout(tmp_path):
    rng = np.random.default_rng(1)
    pix = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)   # (N, RGB, H, W)
    labels = np.array([3, 0, 9], np.uint8)
    recs = [bytes([labels[i]]) + pix[i, 0].tobytes() + pix[i, 1].tobytes() + pix[i, 2].tobytes() for i in range(3)]
    (tmp_path / "b1.bin").write_bytes(b"".join(recs[:2]))
    (tmp_path / "b2.bin").write_bytes(recs[2])
    x, y = load_cifar10_batches([tmp_path / "b1.bin", tmp_path / "b2.bin"])
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    assert y.tolist() == [3, 0, 9]
    np.testing.assert_allclose(x, pix / 255.0, rtol=1e-6)


def test_cifar10_malformed(tmp_path):
    p = tmp_path / "short.bin"
    p.write_bytes(b"\x01" * 3000)
    with pytest.raises(ValueError, match="multiple of 3073"):
        load_cifar10_batches(p)
    p.write_bytes(b"\x0c" + b"\x00" * 3072)
    with pytest.raises(ValueError, match="labels must be 0..9"):
        load_cifar10_batches(p)
    with pytest.raises(FileNotFoundError):
        load_cifar10_batches(tmp_path / "missing.bin")


# -- npz ----------------------------------------------------------------------------------------
def test_npz_ok_and_via_catalog(tmp_path):
    x = np.random.default_rng(2).random((20, 4, 4)).astype(np.float64)
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    xl, yl = load_npz(tmp_path / "d.npz")
    assert xl.dtype == np.float32 and yl.dtype == np.int64
    np.testing.assert_allclose(xl, x, rtol=1e-6)
    ds = load_dataset("npz", tmp_path / "d.npz", val_fraction=0.3)
    assert ds.x_train.shape[1:] == (1, 4, 4)   # (N, H, W) gains a channel axis
    assert len(ds.x_val) == 6 and len(ds.x_train) == 14 and ds.num_classes == 2   # 0.3 * 10 per class


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((3, 2))}, "missing keys \\['y'\\]"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(4, np.int64)}, "to match x"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(3)}, "integer labels"),
])
def test_npz_malformed(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(tmp_path / "bad.npz")


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"hello, not a zip")
    with pytest.raises(ValueError, match="npz"):
        load_npz(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load_npz(tmp_path / "single.npy")
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "absent.npz")


def test_catalog_errors():
    with pytest.raises(ValueError, match="expected one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="data_path"):
        load_dataset("mnist")


# -- DataLoader ---------------------------------------------------------------------------------
def _labels(loader, epoch):
    return np.concatenate([yb for _, yb in loader.batches(epoch)])


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_loader_epoch_is_a_permutation_deterministic_by_seed(prefetch):
    n = 103   # prime: the last batch is partial
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    y = np.arange(n)
    a = DataLoader(x, y, batch_size=10, shuffle=True, seed=5, prefetch=prefetch)
    assert len(a) == 11
    e0, e1 = _labels(a, 0), _labels(a, 1)
    assert sorted(e0.tolist()) == list(range(n)) and sorted(e1.tolist()) == list(range(n))
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, y)
    b = DataLoader(x, y, batch_size=10, shuffle=True, seed=5)
    assert np.array_equal(_labels(b, 0), e0) and np.array_equal(_labels(b, 1), e1)
    assert not np.array_equal(_labels(DataLoader(x, y, 10, seed=6), 0), e0)
    for xb, yb in a.batches(0):   # x and y stay paired
        assert np.array_equal(xb[:, 0].astype(np.int64), yb)


def test_loader_iter_advances_epochs_and_resume_offset():
    x = np.arange(20, dtype=np.float32)[:, None]
    loader = DataLoader(x, np.arange(20), batch_size=4, seed=1)
    first = np.concatenate([yb for _, yb in loader])
    second = np.concatenate([yb for _, yb in loader])
    assert np.array_equal(first, _labels(loader, 0)) and np.array_equal(second, _labels(loader, 1))
    tail = np.concatenate([yb for _, yb in loader.batches(0, start=2)])
    assert np.array_equal(tail, first[8:])


def test_loader_no_shuffle_drop_last_and_errors():
    x = np.zeros((10, 2), np.float32)
    loader = DataLoader(x, np.arange(10), batch_size=4, shuffle=False, drop_last=True)
    assert len(loader) == 2
    assert [yb.tolist() for _, yb in loader.batches(0)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, np.arange(10), batch_size=0)
    with pytest.raises(ValueError, match="10 examples but y has 9"):
        DataLoader(x, np.arange(9))


def test_loader_transform_error_reaches_consumer_and_early_break():
    x = np.zeros((40, 2), np.float32)

    def boom(xb):
        raise RuntimeError("transform failed")

    with pytest.raises(RuntimeError, match="transform failed"):
        list(DataLoader(x, np.arange(40), 8, transform=boom).batches(0))
    gen = DataLoader(x, np.arange(40), 4, prefetch=1).batches(0)
    next(gen)
    gen.close()   # the prefetch thread must stop instead of blocking forever
