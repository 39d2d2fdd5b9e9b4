"""The containers every loader returns; the trainer and models code only against these.

Small datasets come as `ImageSet` (all pixels in memory, batched on the device by `BatchLoader`); folder
datasets too large for memory (Tiny-ImageNet, ImageNet) come as `FileSet` (paths + labels, decoded by the
workers of a `FolderLoader`). `DataBundle.kind` says which, and `build_loader` dispatches on it.
"""

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
class FileSet:
    """One split as image files on disk and their labels; pixels are decoded batch by batch in workers.

    `paths` are absolute (str, or Path turned into str) so a worker needs no root to open them; str rather
    than Path because a split of 1.28M Path objects costs several times the memory.
    """

    paths: list[str]
    labels: torch.Tensor

    def __post_init__(self) -> None:
        self.paths = [str(p) for p in self.paths]
        n = len(self.paths)
        if self.labels.dtype != torch.int64 or tuple(self.labels.shape) != (n,):
            raise DatasetError(f"FileSet.labels must be int64 ({n},), got {self.labels.dtype} "
                               f"{tuple(self.labels.shape)}")
        self.labels = self.labels.contiguous()

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class FolderTransforms:
    """How a folder dataset's decoded RGB images become fixed `size` x `size` uint8 tensors.

    train_crop="pad": images are `size` square already (Tiny-ImageNet); train = RandomCrop(size,
    padding=crop_pad) + flip, eval = as is. train_crop="resized": any size (ImageNet); train =
    RandomResizedCrop(size) + flip, eval = Resize(eval_resize) + CenterCrop(size).
    """

    train_crop: str  # "pad" | "resized"
    size: int
    eval_resize: int = 0  # shorter side before the eval CenterCrop; 0 = no resize (train_crop="pad")

    def __post_init__(self) -> None:
        if self.train_crop not in ("pad", "resized"):
            raise ValueError(f"FolderTransforms.train_crop must be 'pad' or 'resized', got {self.train_crop!r}")
        if self.train_crop == "resized" and self.eval_resize < self.size:
            raise ValueError(f"FolderTransforms: eval_resize={self.eval_resize} < size={self.size}")


@dataclass
class DataBundle:
    """A dataset's fixed train/test splits plus what a model and a normalizer need to know about it.

    kind="memory": train/test are ImageSets; kind="folder": FileSets, and `transforms` says how to turn
    their files into `image_size` square tensors.
    """

    name: str
    train: ImageSet | FileSet
    test: ImageSet | FileSet
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    num_coarse_classes: int | None = None
    coarse_class_names: list[str] | None = None
    kind: str = "memory"  # "memory" | "folder"
    transforms: FolderTransforms | None = None  # required when kind == "folder"

    def __post_init__(self) -> None:
        want = {"memory": ImageSet, "folder": FileSet}.get(self.kind)
        if want is None:
            raise ValueError(f"DataBundle.kind must be 'memory' or 'folder', got {self.kind!r}")
        if not (isinstance(self.train, want) and isinstance(self.test, want)):
            raise ValueError(f"DataBundle(kind={self.kind!r}) needs {want.__name__} splits, got "
                             f"{type(self.train).__name__}/{type(self.test).__name__}")
        if self.kind == "folder" and self.transforms is None:
            raise ValueError("DataBundle(kind='folder') needs `transforms`")
