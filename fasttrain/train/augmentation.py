"""Augmentation by name for the config key `augment` (e.g. ["flip", "crop"]): a Compose of the
transforms in fasttrain.data.augment, sized for the dataset's images. The trainer applies it to
every training batch with a generator keyed by (seed, step), so a resumed run draws the same
augmentations as an uninterrupted one."""
from __future__ import annotations

import numpy as np

from ..data.augment import ColorJitter, Compose, Cutout, PCANoise, RandomCrop, RandomHorizontalFlip, RandomResizedCrop

AUGMENTATIONS = ("flip", "crop", "scale", "jitter", "pca", "cutout")


def build_augment(names, input_shape, x_train=None) -> Compose | None:
    """Compose for `names` (in the given order) on images of shape (C, H, W); None for no names.

    flip: horizontal flip p=0.5; crop: random crop of the image size with padding max(1, H/8)
    (4 px on 32x32 CIFAR, as He et al. 2016); scale: random resized crop, 50-100% of the area;
    jitter: brightness/contrast/saturation 0.2 (RGB only); pca: AlexNet's PCA colour noise with
    alpha 0.1, fitted on x_train (the training images, as the batches will arrive); cutout: a
    square of side max(1, H/4)."""
    if not names:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"augment: expected a list of names from {list(AUGMENTATIONS)}, got {names!r}")
    if len(input_shape) != 3:
        raise ValueError(f"augment: expected images (C, H, W), got input shape {tuple(input_shape)}")
    c, h, w = input_shape
    transforms = []
    for name in names:
        if name == "flip":
            transforms.append(RandomHorizontalFlip(0.5))
        elif name == "crop":
            transforms.append(RandomCrop((h, w), padding=max(1, h // 8)))
        elif name == "scale":
            transforms.append(RandomResizedCrop(scale=(0.5, 1.0), size=(h, w)))
        elif name == "jitter":
            if c != 3:
                raise ValueError(f"augment 'jitter': expected RGB images (3 channels), got {c}")
            transforms.append(ColorJitter(0.2, 0.2, 0.2))
        elif name == "pca":
            if x_train is None:
                raise ValueError("augment 'pca': expected the training images to fit the colour PCA, got none")
            transforms.append(PCANoise(0.1).fit(x_train))
        elif name == "cutout":
            transforms.append(Cutout(max(1, h // 4)))
        else:
            raise ValueError(f"augment: unknown name {name!r}; expected some of {list(AUGMENTATIONS)}")
    return Compose(transforms)


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The augmentation generator of one training step: a pure function of (seed, step)."""
    return np.random.default_rng([int(seed), int(step), 0xA6])
