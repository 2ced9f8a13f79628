"""Data: the bundled digits set, a synthetic CIFAR-shaped set, loaders for standard file formats
(MNIST IDX, CIFAR-10 binary, .npz, image folders), per-channel standardization (fitted on training data only), augmentation, PCA/whitening and a prefetching batch loader."""
from .augment import (ColorJitter, Compose, Cutout, Mixup, PCANoise, RandomCrop, RandomHorizontalFlip,
                      RandomResizedCrop, mixup_loss, mixup_targets, tta_predict, tta_views)
from .catalog import DATASETS, load_dataset
from .datasets import Dataset, load_digits_dataset, stratified_split, synthetic_cifar
from .formats import load_cifar10_batches, load_mnist, load_mnist_idx, load_npz
from .images import load_image_folder
from .validate import DataError
from .loader import DataLoader
from .preprocess import PCA, ChannelStandardizer, MeanImage, Whitening

__all__ = ["DATASETS", "load_dataset", "Dataset", "load_digits_dataset", "stratified_split", "synthetic_cifar", "load_mnist", "load_mnist_idx",
           "load_cifar10_batches", "load_npz", "load_image_folder", "DataError", "DataLoader", "Compose", "RandomHorizontalFlip",
           "RandomCrop", "RandomResizedCrop", "ColorJitter", "PCANoise", "Cutout", "Mixup", "mixup_targets", "mixup_loss",
           "tta_predict", "tta_views", "ChannelStandardizer", "MeanImage", "PCA", "Whitening"]
