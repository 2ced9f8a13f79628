"""An image folder: one subfolder per class (sorted names give labels 0, 1, ...), PNG or JPEG files
in each, read with Pillow.

    root/cat/001.png  root/cat/002.jpg  root/dog/a.jpeg ...

Every image becomes RGB, or one grey channel when all of them are grey; `image_size` S resizes
each to S x S (bilinear); without it all images must already share one size. Pixels are scaled to
[0, 1]. Hidden files (a leading '.') are skipped; any other file that is not .png/.jpg/.jpeg is an
error, so a stray file is never silently dropped from (or read into) the training set.
"""
from __future__ import annotations

import os

import numpy as np

from .validate import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def image_folder_files(root) -> tuple[list[tuple[str, int]], list[str]]:
    """([(file path, label)], class names) of an image folder, checked for its layout."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder; expected a folder with one subfolder of images per class")
    classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DataError(f"{root}: no class subfolders; expected one subfolder of PNG/JPEG images per class")
    files = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
        for e in entries:
            path = os.path.join(folder, e)
            if not os.path.isfile(path) or os.path.splitext(e)[1].lower() not in EXTENSIONS:
                raise DataError(f"{path}: not a PNG/JPEG file; expected only {'/'.join(EXTENSIONS)} files "
                                f"in the class folders of {root}")
            files.append((path, label))
        if not entries:
            raise DataError(f"{folder}: class folder {name!r} has no images; expected at least one PNG/JPEG "
                            "file (or remove the folder)")
    return files, classes


def load_image_folder(root, image_size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """x (N, C, S, S) float32 in [0, 1] (C = 3, or 1 when every image is grey), y (N,) int64 and the
    class names, from an image folder (module docstring)."""
    from PIL import Image, UnidentifiedImageError

    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size: expected a positive int (pixels per side), got {image_size!r}")
    files, classes = image_folder_files(root)
    images, grey, first = [], True, None
    for path, _ in files:
        try:
            with Image.open(path) as img:
                grey = grey and img.mode in _GREY_MODES
                rgb = img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: cannot be read as an image ({exc}); expected a PNG or JPEG file") from None
        if image_size is not None:
            rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
        elif first is None:
            first = (path, rgb.size)
        elif rgb.size != first[1]:
            raise DataError(f"{path}: image is {rgb.size[0]}x{rgb.size[1]} pixels, {first[0]} is "
                            f"{first[1][0]}x{first[1][1]}; expected one size: pass --image-size S to resize all to S x S")
        images.append(np.asarray(rgb, dtype=np.uint8))
    x = np.stack(images).transpose(0, 3, 1, 2)            # (N, H, W, 3) -> (N, 3, H, W)
    if grey:
        x = x[:, :1]
    x = x.astype(np.float32) / np.float32(255)
    y = np.array([label for _, label in files], dtype=np.int64)
    return np.ascontiguousarray(x), y, classes
