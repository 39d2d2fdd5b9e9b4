"""The two containers every loader returns; the trainer and models code only against these."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oracle_kd.errors import DatasetError


@dataclass
class ImageSet:
    """One split kept as raw uint8 pixels (N, C, H, W) on the CPU.

    uint8 is 4x smaller than float32, so a whole CIFAR split fits on the GPU and is normalized per batch.
    """

    images: torch.Tensor
    labels: torch.Tensor
    coarse_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                               f"{tuple(self.images.shape)}")
        n = self.images.shape[0]
        for field in ("labels", "coarse_labels"):
            t = getattr(self, field)
            if t is None:
                continue
            if t.dtype != torch.int64 or tuple(t.shape) != (n,):
                raise DatasetError(f"ImageSet.{field} must be int64 ({n},), got {t.dtype} {tuple(t.shape)}")
            setattr(self, field, t.contiguous())
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class DataBundle:
    """A dataset's fixed train/test splits plus what a model and a normalizer need to know about it."""

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    num_coarse_classes: int | None = None
    coarse_class_names: list[str] | None = None
