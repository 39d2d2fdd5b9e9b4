"""An in-memory batch loader: the uint8 split lives on the device and every epoch is a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would have."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

import torch

from oracle_kd.data.augment import augment_batch, normalize
from oracle_kd.data.types import DataBundle, ImageSet

if TYPE_CHECKING:  # imagefolder imports this module (for _EPOCH_STRIDE); build_loader imports it lazily
    from oracle_kd.data.imagefolder import FolderLoader

_EPOCH_STRIDE = 1_000_003  # prime; (seed, epoch) pairs map to distinct generator seeds for any realistic epoch count


class BatchLoader:
    """Yields (x float32 normalized, y int64) batches on `device`.

    Train: a fresh shuffle and fresh augmentation per epoch. Test: in order, normalization only.
    No worker processes: indexing a device-resident tensor is faster than any DataLoader pipeline for
    32x32 images. Batches depend on the device's RNG, so CPU and CUDA runs see different (each
    reproducible) orders.
    """

    def __init__(self, data: ImageSet, *, batch_size: int, train: bool, mean: Sequence[float],
                 std: Sequence[float], pad: int = 0, flip: bool = False, device: str | torch.device = "cpu",
                 seed: int = 0, drop_last: bool = False, channels_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"BatchLoader: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)  # moved once; batches are gathered on the device
        self.labels = data.labels.to(self.device)
        self.num_samples = len(data)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.mean, self.std = tuple(mean), tuple(std)
        self.pad, self.flip = int(pad), bool(flip)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.channels_last = bool(channels_last)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def generator(self, epoch: int) -> torch.Generator:
        """The epoch's only source of randomness (shuffle, then crops/flips batch by batch)."""
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * _EPOCH_STRIDE + int(epoch)) % (1 << 63))
        return g

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = self.num_samples, self.batch_size
        g = self.generator(epoch) if self.train else None
        order = torch.randperm(n, generator=g, device=self.device) if g is not None else None
        for b in range(len(self)):
            lo, hi = b * bs, min((b + 1) * bs, n)
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                x = augment_batch(self.images[idx], pad=self.pad, flip=self.flip, generator=g)
                y = self.labels[idx]
            x = normalize(x, self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


def build_loader(bundle: DataBundle, split: Literal["train", "test"], *, batch_size: int, seed: int,
                 device: str | torch.device, channels_last: bool = False, drop_last: bool = False, pad: int = 0,
                 flip: bool = False, workers: int = 4) -> BatchLoader | FolderLoader:
    """The loader for one split of any bundle, so the runner need not know how a dataset is stored.

    "train" shuffles and augments (pad/flip; for ImageNet-style bundles RandomResizedCrop + flip, pad
    unused) and honours drop_last. "test" is in order with no augmentation and always keeps the last
    partial batch, so evaluation sees every image. `workers` applies to folder bundles only.
    """
    if split not in ("train", "test"):
        raise ValueError(f"build_loader: split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    data = bundle.train if train else bundle.test
    kw = dict(batch_size=batch_size, train=train, mean=bundle.mean, std=bundle.std, device=device,
              channels_last=channels_last)
    if train:
        kw.update(pad=pad, flip=flip, seed=seed, drop_last=drop_last)
    if bundle.kind == "memory":
        return BatchLoader(data, **kw)
    from oracle_kd.data.imagefolder import FolderLoader

    return FolderLoader(data, transforms=bundle.transforms, workers=workers, **kw)
