"""An in-memory batch loader: the uint8 split lives on the device and every epoch is a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would have."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

import torch

from oracle_kd.data.augment import apply_augment, draw_augment, normalize
from oracle_kd.data.types import DataBundle, ImageSet

if TYPE_CHECKING:  # imagefolder imports this module (for _EPOCH_STRIDE); build_loader imports it lazily
    from oracle_kd.data.imagefolder import FolderLoader

_EPOCH_STRIDE = 1_000_003  # prime; (seed, epoch) pairs map to distinct generator seeds for any realistic epoch count


def shard_part(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous share of n items split over `world` ranks (torch.tensor_split's sizes: the
    first n % world shares one larger). world=1 gives everything."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return slice(lo, lo + base + (1 if rank < extra else 0))


class Batching:
    """The batch arithmetic both loaders share, DDP sharding included.

    Train batches are *global*: batch b holds the same images on every rank count, and with a
    `shard=(rank, world)` each rank yields only its contiguous part of it (sizes differ by at most one).
    That is what makes a DDP run equal to the single-process run on the same global batch. Under DDP a
    trailing train batch with fewer images than ranks is skipped (every rank needs at least one image).
    Test splits are cut into one contiguous share per rank and batched within it; the runner sums the
    per-rank counts.
    """

    def _init_batching(self, num_samples: int, batch_size: int, train: bool, drop_last: bool,
                       shard: tuple[int, int]) -> None:
        rank, world = int(shard[0]), int(shard[1])
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"{type(self).__name__}: shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.batch_size, self.train, self.drop_last = int(batch_size), bool(train), bool(drop_last)
        self.rank, self.world = rank, world
        self.num_samples = int(num_samples)  # global (train) or this rank's share (test)
        self.local_range = range(num_samples)
        if not train and world > 1:
            part = shard_part(num_samples, rank, world)
            self.local_range = range(part.start, part.stop)
            self.num_samples = len(self.local_range)

    def __len__(self) -> int:
        n, bs = self.num_samples, self.batch_size
        if self.drop_last and self.train:
            return n // bs
        full, rest = divmod(n, bs)
        return full + (1 if rest and (not self.train or rest >= self.world) else 0)

    def global_batch_size(self, b: int) -> int:
        """How many images batch b holds over all ranks."""
        return min(self.batch_size, self.num_samples - b * self.batch_size)

    def batch_bounds(self, b: int) -> tuple[int, int]:
        """[lo, hi) of batch b in the epoch's order (train) or in this rank's share (test)."""
        lo = b * self.batch_size
        return lo, lo + self.global_batch_size(b)

    def my_part(self, n: int) -> slice:
        """This rank's part of a global train batch of n images."""
        return shard_part(n, self.rank, self.world)


class BatchLoader(Batching):
    """Yields (x float32 normalized, y int64) batches on `device`.

    Train: a fresh shuffle and fresh augmentation per epoch. Test: in order, normalization only.
    No worker processes: indexing a device-resident tensor is faster than any DataLoader pipeline for
    32x32 images. Batches depend on the device's RNG, so CPU and CUDA runs see different (each
    reproducible) orders.
    """

    def __init__(self, data: ImageSet, *, batch_size: int, train: bool, mean: Sequence[float],
                 std: Sequence[float], pad: int = 0, flip: bool = False, device: str | torch.device = "cpu",
                 seed: int = 0, drop_last: bool = False, channels_last: bool = False,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self._init_batching(len(data), batch_size, train, drop_last, shard)
        self.device = torch.device(device)
        r = self.local_range  # moved once; batches are gathered on the device
        self.images = data.images[r.start:r.stop].to(self.device)
        self.labels = data.labels[r.start:r.stop].to(self.device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.pad, self.flip = int(pad), bool(flip)
        self.seed = int(seed)
        self.channels_last = bool(channels_last)

    def generator(self, epoch: int) -> torch.Generator:
        """The epoch's only source of randomness (shuffle, then crops/flips batch by batch)."""
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * _EPOCH_STRIDE + int(epoch)) % (1 << 63))
        return g

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = self.generator(epoch) if self.train else None
        order = torch.randperm(self.num_samples, generator=g, device=self.device) if g is not None else None
        for b in range(len(self)):
            lo, hi = self.batch_bounds(b)
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi]
            else:  # draws for the whole global batch, pixels only for this rank's part
                draws = draw_augment(hi - lo, pad=self.pad, flip=self.flip, generator=g, device=self.device)
                part = self.my_part(hi - lo)
                idx = order[lo:hi][part]
                x = apply_augment(self.images[idx], draws[part], pad=self.pad)
                y = self.labels[idx]
            x = normalize(x, self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


def build_loader(bundle: DataBundle, split: Literal["train", "test"], *, batch_size: int, seed: int,
                 device: str | torch.device, channels_last: bool = False, drop_last: bool = False, pad: int = 0,
                 flip: bool = False, workers: int = 4, shard: tuple[int, int] = (0, 1)) -> BatchLoader | FolderLoader:
    """The loader for one split of any bundle, so the runner need not know how a dataset is stored.

    "train" shuffles and augments (pad/flip; for ImageNet-style bundles RandomResizedCrop + flip, pad
    unused) and honours drop_last. "test" is in order with no augmentation and always keeps the last
    partial batch, so evaluation sees every image. `workers` applies to folder bundles only.
    `shard=(rank, world)`: this DDP rank's part of every global train batch, or its share of the test
    split (see `Batching`).
    """
    if split not in ("train", "test"):
        raise ValueError(f"build_loader: split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    data = bundle.train if train else bundle.test
    kw = dict(batch_size=batch_size, train=train, mean=bundle.mean, std=bundle.std, device=device,
              channels_last=channels_last, shard=shard)
    if train:
        kw.update(pad=pad, flip=flip, seed=seed, drop_last=drop_last)
    if bundle.kind == "memory":
        return BatchLoader(data, **kw)
    from oracle_kd.data.imagefolder import FolderLoader

    return FolderLoader(data, transforms=bundle.transforms, workers=workers, **kw)
