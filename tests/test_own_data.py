"""Training on your own data: every file format the CLI reads (npz NCHW/NHWC/grey, CIFAR-10 binary,
MNIST IDX, an image folder), written here as small files; the checks that run before training, each
one DataError line naming the file; and one epoch through the CLI on a tiny image folder."""
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from fasttrain.data import DataError, load_dataset, load_image_folder
from fasttrain.data.validate import to_nchw

Image = pytest.importorskip("PIL.Image")


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return path


def _labels(n, classes=3):
    return np.arange(n) % classes


# -- npz: layouts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,layout", [((12, 3, 5, 6), "NCHW"), ((12, 5, 6, 3), "NHWC"), ((12, 7, 6, 1), "NHWC"),
                                          ((12, 16, 5, 5), "NCHW"), ((12, 5, 6), "grey"), ((12, 3, 3, 3), "NCHW")])
def test_npz_layout_rule(tmp_path, shape, layout):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    ds = load_dataset("npz", _npz(tmp_path / "d.npz", x, _labels(12)), val_fraction=0.25)
    want = {"NCHW": lambda: x, "NHWC": lambda: x.transpose(0, 3, 1, 2), "grey": lambda: x[:, None]}[layout]()
    assert ds.input_shape == want.shape[1:]
    got = np.concatenate([ds.x_train, ds.x_val])
    assert sorted(map(bytes, got)) == sorted(map(bytes, np.ascontiguousarray(want)))   # same images, split
    assert ds.num_classes == 3


def test_npz_uint8_pixels_are_scaled_to_unit_range(tmp_path):
    x = np.full((6, 5, 5, 3), 255, np.uint8)
    x[0] = 0
    ds = load_dataset("npz", _npz(tmp_path / "d.npz", x, _labels(6, 2)), val_fraction=0.0)
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape[1:] == (3, 5, 5)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


def test_to_nchw_rejects_other_ranks():
    with pytest.raises(DataError, match=r"f\.npz: x has shape \(4, 5\); expected images \(N, C, H, W\)"):
        to_nchw(np.zeros((4, 5)), "f.npz")


# -- checks before training -----------------------------------------------------------------------
def _bad_x():
    x = np.ones((10, 1, 4, 4), np.float32)
    x[3, 0, 1, 1] = np.nan
    x[7, 0, 0, 0] = np.inf
    return x


@pytest.mark.parametrize("x,y,match", [
    (_bad_x(), _labels(10), r"x holds 2 NaN/inf values in 2 examples \(first: example 3\); expected finite"),
    (np.ones((6, 1, 3, 3)), np.array([0, 1, -2, 1, 0, 1]), r"label -2 at example 2; expected class indices >= 0"),
    (np.ones((0, 1, 3, 3)), np.zeros(0, np.int64), r"no examples .*expected at least one"),
    (np.ones((6, 2)), _labels(6), r"x has shape \(6, 2\); expected images"),
    (np.ones((6, 0, 3, 3)), _labels(6), r"expected \(N, C, H, W\) with C, H, W >= 1"),
])
def test_npz_problems_are_one_line_errors_naming_the_file(tmp_path, x, y, match):
    path = _npz(tmp_path / "mine.npz", x, y)
    with pytest.raises(DataError, match=match) as e:
        load_dataset("npz", path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


@pytest.mark.parametrize("content,match", [
    (b"\x00\x01random bytes, not a zip", r"not an \.npz archive \(it starts with bytes 0001"),
    (None, r"a damaged \.npz archive"),
])
def test_npz_unreadable_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "data.npz"
    if content is None:   # a truncated copy of a valid archive
        _npz(tmp_path / "full.npz", np.random.default_rng(0).random((50, 1, 8, 8)), _labels(50))
        raw = (tmp_path / "full.npz").read_bytes()
        content = raw[:len(raw) // 2]
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as e:
        load_dataset("npz", path)
    assert str(e.value).startswith(str(path))


# -- CIFAR-10 binary and MNIST IDX ----------------------------------------------------------------
def _cifar_batch(path, labels, rng):
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None],
                              rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)], axis=1)
    path.write_bytes(records.tobytes())
    return records


def test_cifar10_folder_of_batches(tmp_path):
    rng = np.random.default_rng(1)
    r1 = _cifar_batch(tmp_path / "data_batch_1.bin", _labels(10, 10), rng)
    r2 = _cifar_batch(tmp_path / "data_batch_2.bin", _labels(10, 10), rng)
    ds = load_dataset("cifar10", tmp_path, val_fraction=0.5)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert len(ds.y_train) == len(ds.y_val) == 10
    pixels = np.concatenate([r1, r2])[:, 1:].reshape(-1, 3, 32, 32) / 255.0
    got = np.concatenate([ds.x_train, ds.x_val])
    assert sorted(map(bytes, got)) == sorted(map(bytes, pixels.astype(np.float32)))


def _idx(path, array, compress=False):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_mnist_idx_folder(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (20, 6, 5), dtype=np.uint8)
    labels = (np.arange(20) % 4).astype(np.uint8)
    _idx(tmp_path / "train-images-idx3-ubyte", images)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, compress=True)
    ds = load_dataset("mnist", tmp_path, val_fraction=0.25)
    assert ds.input_shape == (1, 6, 5) and ds.num_classes == 4
    assert len(ds.y_train) == 16 and len(ds.y_val) == 4     # round(0.25 * 5) of each class
    assert ds.x_train.max() <= 1.0 and ds.x_train.dtype == np.float32


def test_image_size_belongs_to_image_folders_only(tmp_path):
    with pytest.raises(ValueError, match="image_size=8: resizing applies to dataset 'image_folder' only"):
        load_dataset("npz", _npz(tmp_path / "d.npz", np.ones((4, 1, 2, 2)), _labels(4)), image_size=8)


# -- image folders --------------------------------------------------------------------------------
def _image_folder(root, sizes=((9, 7),), per_class=4, mode="RGB", classes=("ant", "bee", "cat")):
    rng = np.random.default_rng(3)
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            a = (rng.random((h, w, 3)) * 50).astype(np.uint8)
            a[..., c % 3] += 200          # each class has its own dominant colour
            img = Image.fromarray(a)
            img = img.convert(mode) if mode != "RGB" else img
            img.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folder_labels_from_sorted_subfolders(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    x, y, classes = load_image_folder(root)
    assert classes == ["ant", "bee", "cat"]
    assert x.shape == (12, 3, 7, 9) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(y, np.repeat([0, 1, 2], 4))
    # the PNGs are lossless: the pixels come back exactly, channels first
    png = np.asarray(Image.open(root / "bee" / "1.png"), np.float32) / 255
    np.testing.assert_array_equal(x[5], png.transpose(2, 0, 1))
    assert (x[y == 1, 1].mean() > x[y == 1, 0].mean())      # bee's dominant channel is green


def test_image_folder_resizes_and_keeps_grey_as_one_channel(tmp_path):
    root = _image_folder(tmp_path / "imgs", sizes=((9, 7), (12, 12), (5, 8)), mode="L")
    with pytest.raises(DataError, match=r"image is 12x12 pixels, .*0\.jpg is 9x7; expected one size: "
                                        r"pass --image-size S"):
        load_image_folder(root)
    ds = load_dataset("image_folder", root, val_fraction=0.25, image_size=6)
    assert ds.input_shape == (1, 6, 6) and ds.num_classes == 3


def test_image_folder_layout_errors(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    (root / "bee" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.txt: not a PNG/JPEG file"):
        load_image_folder(root)
    os.remove(root / "bee" / "notes.txt")
    (root / "bee" / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match=r"broken\.png: cannot be read as an image"):
        load_image_folder(root)
    os.remove(root / "bee" / "broken.png")
    os.makedirs(root / "dog")
    with pytest.raises(DataError, match=r"class folder 'dog' has no images"):
        load_image_folder(root)
    with pytest.raises(DataError, match=r"no class subfolders"):
        load_image_folder(root / "ant")
    (root / "bee" / ".DS_Store").write_bytes(b"hidden files are skipped")
    os.rmdir(root / "dog")
    assert load_image_folder(root, image_size=4)[0].shape == (12, 3, 4, 4)


# -- through the CLI ------------------------------------------------------------------------------
def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fasttrain", "train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_trains_one_epoch_on_a_tiny_image_folder(tmp_path):
    root = _image_folder(tmp_path / "imgs", sizes=((10, 10), (11, 9)), per_class=6)
    run = _cli("--dataset", "image_folder", "--data-path", str(root), "--image-size", "8", "--epochs", "1",
               "--batch-size", "6", "--run-dir", str(tmp_path / "run"), "--quiet", "--monitor-every", "0",
               cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "final validation accuracy" in run.stdout
    assert (tmp_path / "run" / "checkpoint.npz").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()


def test_cli_nan_in_the_data_is_reported_as_the_data_not_the_learning_rate(tmp_path):
    path = _npz(tmp_path / "mine.npz", _bad_x(), _labels(10))
    run = _cli("--dataset", "npz", "--data-path", str(path), "--epochs", "1", "--run-dir", str(tmp_path / "run"),
               cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fasttrain: error: {path}: x holds 2 NaN/inf values")
    assert "learning rate" not in run.stderr + run.stdout
    assert not (tmp_path / "run").exists()                 # checked before the run folder is made


def test_cli_image_size_without_an_image_folder_is_a_config_error(tmp_path):
    path = _npz(tmp_path / "mine.npz", np.ones((6, 1, 4, 4)), _labels(6))
    run = _cli("--dataset", "npz", "--data-path", str(path), "--image-size", "8", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith("fasttrain: error: --image-size: expected no image size with dataset 'npz'")
