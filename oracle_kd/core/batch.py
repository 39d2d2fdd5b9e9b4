"""What a training batch carries, and what a method may know about the data it trains on.

Loaders yield a `Batch` record rather than an (x, y) tuple so that a method can read more than pixels and
labels without the engine knowing why: CRD reads each sample's index in the training split (its memory
bank is indexed by it) and draws its negatives from the batch's `key`. The key is a pure function of
(run seed, epoch, batch number), like the augmentation: a method that draws from it gets the same numbers
after a resume, in a cohort and alone, and never moves the process RNG.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch


def batch_key(seed: int, epoch: int, batch: int, salt: str = "") -> int:
    """A 63-bit seed for a method's own draws on one batch (distinct from the loader's generator seeds); a
    `salt` gives another independent one (an extra view's augmentation)."""
    digest = hashlib.sha256(f"oracle-kd batch {seed} {epoch} {batch}{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class Batch:
    """x (normalised images), y (labels), `index` (each sample's position in its split, on x's device), `key`
    (see `batch_key`) and `views` (extra views of the same images by name, normalised, for the methods that
    declared them: MLKD's "strong"). Unpacks as (x, y), for code that needs only those."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None
    key: int = 0
    views: dict[str, torch.Tensor] = field(default_factory=dict)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.x
        yield self.y

    def with_labels(self, y: torch.Tensor) -> "Batch":
        """The same batch with other labels (pseudo-labels of a phase whose samples have none)."""
        return replace(self, y=y)

    def generator(self) -> torch.Generator:
        """A generator on x's device seeded by this batch's key, for a method's per-step draws."""
        g = torch.Generator(device=self.x.device)
        g.manual_seed(self.key)
        return g


@dataclass(frozen=True)
class DataInfo:
    """What a method may size itself by: the input shape (C, H, W), the class count and the training
    split's labels in index order (a memory bank over samples, negatives drawn by class)."""

    input_shape: tuple[int, ...]
    num_classes: int
    train_labels: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.train_labels.numel())
