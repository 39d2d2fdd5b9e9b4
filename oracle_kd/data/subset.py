"""`dataset.train_size`: a stratified subset of a bundle's training split, for scarce-data runs.

Each class keeps a share of the subset proportional to its share of the split (largest-remainder
rounding, so the counts sum to exactly the size asked for), and at least one sample. Which samples of a
class are kept is drawn by a torch.Generator seeded with the run seed; the kept samples stay in their
original order. The test split is never cut. A size at or above the training split is no subset: the config
check normalises it to 0 (the whole split, under the run's usual identity) by the split's size as published,
`train_split_size`.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from oracle_kd.data.types import DataBundle, FileSet, ImageSet
from oracle_kd.errors import ConfigError

DIGITS_SAMPLES = 1797  # scikit-learn's digits, split into train and test by `dataset.test_fraction`
TRAIN_SPLITS = {"cifar10": 50_000, "cifar100": 50_000, "tiny_imagenet": 100_000, "imagenet": 1_281_167}


def train_split_size(name: str, test_fraction: float) -> int | None:
    """The training split's size as the dataset is published, known without reading it (digits: what scikit-learn's
    stratified split leaves after holding out ceil(test_fraction·N)); None for a dataset not listed."""
    if name == "digits":
        return DIGITS_SAMPLES - math.ceil(test_fraction * DIGITS_SAMPLES)
    return TRAIN_SPLITS.get(name)


def class_quotas(counts: list[int], size: int) -> list[int]:
    """How many of each class a subset of `size` keeps: counts·size/N rounded by largest remainder (ties to
    the lower class), then every class raised to at least one, each taken from the class most over its
    exact share. Needs len(counts) <= size <= sum(counts); the result sums to `size`, each quota <= its count."""
    total = sum(counts)
    quotas = [c * size // total for c in counts]
    remainders = [c * size % total for c in counts]
    for i in sorted(range(len(counts)), key=lambda i: (-remainders[i], i))[: size - sum(quotas)]:
        quotas[i] += 1
    for i in [i for i, q in enumerate(quotas) if q == 0]:
        # excess over the exact share, in units of 1/total; a donor keeps at least one
        donor = max((j for j, q in enumerate(quotas) if q >= 2), key=lambda j: (quotas[j] * total - counts[j] * size, -j))
        quotas[donor] -= 1
        quotas[i] = 1
    return quotas


def subset_indices(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """The sorted indices of a stratified subset of `size` of `labels` (see class_quotas)."""
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = class_quotas(counts.tolist(), size)
    g = torch.Generator().manual_seed(seed)
    kept = []
    for c, q in zip(classes.tolist(), quotas):
        members = torch.nonzero(labels == c).flatten()
        kept.append(members[torch.randperm(len(members), generator=g)[:q]])
    return torch.sort(torch.cat(kept)).values


def train_subset(bundle: DataBundle, size: int, seed: int) -> DataBundle:
    """`bundle` with its train split cut to a stratified subset of `size` samples drawn by `seed` (coarse
    labels kept aligned); size 0 or at least the split's length returns `bundle` itself."""
    train = bundle.train
    if size == 0 or size >= len(train):
        return bundle
    present = int(torch.unique(train.labels).numel())
    if size < present:
        raise ConfigError(f"dataset.train_size={size}: fewer samples than the {present} classes of {bundle.name}'s "
                          f"training split; give at least {present} (one per class), or 0 for the whole split")
    idx = subset_indices(train.labels, size, seed)
    if isinstance(train, ImageSet):
        coarse = None if train.coarse_labels is None else train.coarse_labels[idx]
        sub: ImageSet | FileSet = ImageSet(train.images[idx], train.labels[idx], coarse)
    else:
        sub = FileSet([train.paths[i] for i in idx.tolist()], train.labels[idx])
    return dataclasses.replace(bundle, train=sub)
