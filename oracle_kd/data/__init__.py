"""Datasets as device-resident uint8 tensors (or, for ImageNet-sized sets, file lists decoded by workers),
batched augmentation, and deterministic loaders; `build_loader` picks the right one for a bundle."""

from oracle_kd.data.augment import augment_batch, normalize
from oracle_kd.data.imagefolder import FolderLoader
from oracle_kd.data.loader import BatchLoader, build_loader
from oracle_kd.data.registry import DatasetShape, available_datasets, dataset_shape, load_dataset
from oracle_kd.data.subset import train_subset
from oracle_kd.data.types import DataBundle, FileSet, FolderTransforms, ImageSet

__all__ = ["ImageSet", "FileSet", "FolderTransforms", "DataBundle", "load_dataset", "available_datasets",
           "DatasetShape", "dataset_shape", "BatchLoader", "FolderLoader", "build_loader", "augment_batch", "normalize",
           "train_subset"]
