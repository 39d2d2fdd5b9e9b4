"""Datasets as device-resident uint8 tensors, batched augmentation, and a deterministic batch loader."""

from oracle_kd.data.augment import augment_batch, normalize
from oracle_kd.data.loader import BatchLoader
from oracle_kd.data.registry import available_datasets, load_dataset
from oracle_kd.data.types import DataBundle, ImageSet

__all__ = ["ImageSet", "DataBundle", "load_dataset", "available_datasets", "BatchLoader", "augment_batch",
           "normalize"]
