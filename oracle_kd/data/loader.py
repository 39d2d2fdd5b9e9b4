"""An in-memory batch loader: the uint8 split lives on the device and every epoch is a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would have."""

from __future__ import annotations

from typing import Iterator, Literal, Sequence

import torch

from oracle_kd.core.batch import Batch, batch_key
from oracle_kd.data.augment import apply_augment, draw_augment, normalize
from oracle_kd.data.batching import EPOCH_STRIDE, Batching
from oracle_kd.data.imagefolder import FolderLoader
from oracle_kd.data.strong import strong_view
from oracle_kd.data.types import DataBundle, ImageSet

VIEWS = {"strong": strong_view}  # extra views a method may declare (`Distiller.views`), by name


class BatchLoader(Batching):
    """Yields `Batch` records (x float32 normalized, y int64, each sample's index in the split) on `device`.

    Train: a fresh shuffle and fresh augmentation per epoch. Test: in order, normalization only.
    No worker processes: indexing a device-resident tensor is faster than any DataLoader pipeline for
    32x32 images. Batches depend on the device's RNG, so CPU and CUDA runs see different (each
    reproducible) orders.
    """

    def __init__(self, data: ImageSet, *, batch_size: int, train: bool, mean: Sequence[float],
                 std: Sequence[float], pad: int = 0, flip: bool = False, device: str | torch.device = "cpu",
                 seed: int = 0, drop_last: bool = False, channels_last: bool = False,
                 shard: tuple[int, int] = (0, 1), dtype: torch.dtype = torch.float32,
                 views: tuple[str, ...] = ()) -> None:
        self._init_batching(len(data), batch_size, train, drop_last, shard)
        unknown = sorted(set(views) - set(VIEWS))
        if unknown:
            raise ValueError(f"BatchLoader: unknown view(s) {unknown}; known: {sorted(VIEWS)}")
        self.views = tuple(views) if train else ()
        self.device = torch.device(device)
        r = self.local_range  # moved once; batches are gathered on the device
        self.images = data.images[r.start:r.stop].to(self.device)
        self.labels = data.labels[r.start:r.stop].to(self.device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.pad, self.flip = int(pad), bool(flip)
        self.seed = int(seed)
        self.channels_last = bool(channels_last)
        self.dtype = dtype

    def generator(self, epoch: int) -> torch.Generator:
        """The epoch's only source of randomness (shuffle, then crops/flips batch by batch)."""
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * EPOCH_STRIDE + int(epoch)) % (1 << 63))
        return g

    def epoch(self, epoch: int) -> Iterator[Batch]:
        g = self.generator(epoch) if self.train else None
        order = torch.randperm(self.num_samples, generator=g, device=self.device) if g is not None else None
        for b in range(len(self)):
            lo, hi = self.batch_bounds(b)
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi]
                idx = torch.arange(self.local_range.start + lo, self.local_range.start + hi, device=self.device)
            else:  # draws for the whole global batch, pixels only for this rank's part
                draws = draw_augment(hi - lo, pad=self.pad, flip=self.flip, generator=g, device=self.device)
                part = self.my_part(hi - lo)
                idx = order[lo:hi][part]
                x = apply_augment(self.images[idx], draws[part], pad=self.pad)
                y = self.labels[idx]
            yield Batch(self._ready(x), y, idx, batch_key(self.seed, epoch, b),
                        {v: self._ready(VIEWS[v](self.images[idx], batch_key(self.seed, epoch, b, v), pad=self.pad,
                                                 flip=self.flip)) for v in self.views})

    def _ready(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels as the model's input: normalised, in the run's dtype and memory format."""
        x = normalize(x, self.mean, self.std, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def build_loader(bundle: DataBundle, split: Literal["train", "test"], *, batch_size: int, seed: int,
                 device: str | torch.device, channels_last: bool = False, drop_last: bool = False, pad: int = 0,
                 flip: bool = False, workers: int = 4, shard: tuple[int, int] = (0, 1),
                 dtype: torch.dtype = torch.float32, views: tuple[str, ...] = ()) -> BatchLoader | FolderLoader:
    """The loader for one split of any bundle, so the runner need not know how a dataset is stored.

    "train" shuffles and augments (pad/flip; for ImageNet-style bundles RandomResizedCrop + flip, pad
    unused) and honours drop_last. "test" is in order with no augmentation and always keeps the last
    partial batch, so evaluation sees every image. `workers` applies to folder bundles only.
    `shard=(rank, world)`: this DDP rank's part of every global train batch, or its share of the test
    split (see `Batching`). `dtype`: the batches' floating type (float64 for fp64 runs).
    """
    if split not in ("train", "test"):
        raise ValueError(f"build_loader: split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    data = bundle.train if train else bundle.test
    kw = dict(batch_size=batch_size, train=train, mean=bundle.mean, std=bundle.std, device=device,
              channels_last=channels_last, shard=shard, dtype=dtype)
    if train:
        kw.update(pad=pad, flip=flip, seed=seed, drop_last=drop_last)
    if bundle.kind == "memory":
        return BatchLoader(data, views=views if train else (), **kw)
    if views:
        raise ValueError(f"extra views ({', '.join(views)}) are made from a dataset held in memory, not {bundle.name}")
    return FolderLoader(data, transforms=bundle.transforms, workers=workers, **kw)
