"""Dataset name -> loader; the config validator lists `available_datasets()` in its error messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from oracle_kd.data.cifar import load_cifar10, load_cifar100
from oracle_kd.data.digits import load_digits_bundle
from oracle_kd.data.download import ensure_dataset
from oracle_kd.data.imagefolder import load_imagenet, load_tiny_imagenet
from oracle_kd.data.types import DataBundle
from oracle_kd.errors import ConfigError

Loader = Callable[..., DataBundle]  # (root, *, seed, test_fraction) -> DataBundle

_LOADERS: dict[str, Loader] = {
    "digits": load_digits_bundle,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tiny_imagenet": load_tiny_imagenet,
    "imagenet": load_imagenet,
}


@dataclass(frozen=True)
class DatasetShape:
    """What a dataset's batches look like, known without reading it: checks made before any data is loaded
    (a method that cannot pair two models at this input size, a phase that needs the split in memory)."""

    channels: int
    image_size: int
    classes: int
    in_memory: bool  # an ImageSet (digits, CIFAR) rather than files decoded by workers


_SHAPES = {
    "digits": DatasetShape(1, 8, 10, True),
    "cifar10": DatasetShape(3, 32, 10, True),
    "cifar100": DatasetShape(3, 32, 100, True),
    "tiny_imagenet": DatasetShape(3, 64, 200, False),
    "imagenet": DatasetShape(3, 224, 1000, False),  # the evaluation crop
}


def dataset_shape(name: str) -> DatasetShape:
    return _SHAPES[name]


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, root: str | Path, *, seed: int = 0, test_fraction: float = 0.25,
                 download: bool = False) -> DataBundle:
    """Load a dataset's train/test splits: CPU uint8 tensors (kind "memory") or file lists (kind "folder").
    `download=True` first fetches, verifies and extracts it into `root` if it is not there (`data/download.py`).

    Raises ConfigError for an unknown name, DatasetError (one line) for missing/malformed/unsafe files.
    """
    if name not in _LOADERS:
        raise ConfigError(f"dataset.name={name!r}: unknown; choose one of: {', '.join(available_datasets())}")
    if download:
        ensure_dataset(name, root)
    return _LOADERS[name](root, seed=seed, test_fraction=test_fraction)
