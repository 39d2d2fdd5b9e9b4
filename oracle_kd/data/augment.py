"""The paper's train-time augmentation as whole-batch tensor ops, on whatever device holds the batch.

A per-image Python/PIL loop would dominate the step time of a CIFAR ResNet on a GPU; here one zero-padded
copy and one advanced-indexing gather crop *and* flip a whole batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch


def normalize(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`(x / 255 - mean) / std` per channel in `dtype` (float32; float64 for fp64 runs), for (C, H, W) or
    (N, C, H, W) uint8 input."""
    channels = x_uint8.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalize: {channels} channels but {len(mean)} means and {len(std)} stds")
    m, s = _channel_stats(tuple(mean), tuple(std), x_uint8.device)
    return x_uint8.to(dtype).div_(255.0).sub_(m).div_(s)


@functools.lru_cache(maxsize=64)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, 1, 1) mean/std tensors made once per device: a fresh host->GPU copy per batch would make the
    CUDA stream synchronise with the host at every step (copies from pageable memory do)."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    return m, s


@dataclass(frozen=True)
class AugmentDraws:
    """One batch's random crop offsets (2, n, 1) and flip flags (n, 1); None where that augmentation is off.

    Drawn for a whole (global) batch and sliceable, so a DDP rank can augment only its shard of the batch
    and still get exactly the pixels a single process would have produced for those images."""

    offsets: torch.Tensor | None
    flipped: torch.Tensor | None

    def __getitem__(self, part: slice) -> "AugmentDraws":
        return AugmentDraws(None if self.offsets is None else self.offsets[:, part],
                            None if self.flipped is None else self.flipped[part])


def draw_augment(n: int, *, pad: int, flip: bool, generator: torch.Generator | None,
                 device: torch.device | str) -> AugmentDraws:
    """Offsets in [0, 2*pad] per image, then (when `flip`) a p = 0.5 flip per image - in that order, from
    `generator`, so a seeded generator reproduces the batch exactly."""
    if pad < 0:
        raise ValueError(f"augment: pad must be >= 0, got {pad}")
    offsets = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=device) if pad > 0 else None
    flipped = torch.rand(n, 1, generator=generator, device=device) < 0.5 if flip else None
    return AugmentDraws(offsets, flipped)


def apply_augment(x_uint8: torch.Tensor, draws: AugmentDraws, *, pad: int) -> torch.Tensor:
    """Crop the zero-padded batch at `draws.offsets` and flip where `draws.flipped`; uint8 in and out."""
    if draws.offsets is None and draws.flipped is None:
        return x_uint8
    n, c, h, w = x_uint8.shape
    dev = x_uint8.device
    rows = torch.arange(h, device=dev).expand(n, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    src = x_uint8
    if draws.offsets is not None:
        src = x_uint8.new_zeros((n, c, h + 2 * pad, w + 2 * pad))
        src[:, :, pad:pad + h, pad:pad + w] = x_uint8
        rows = rows + draws.offsets[0]
        cols = cols + draws.offsets[1]
    if draws.flipped is not None:
        cols = torch.where(draws.flipped, cols.flip(1), cols)  # read the crop's columns right-to-left
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chans = torch.arange(c, device=dev).view(1, c, 1, 1)
    return src[batch, chans, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def augment_batch(x_uint8: torch.Tensor, *, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded batch (independent offsets in [0, 2*pad] per image) and, when `flip`,
    a horizontal flip with p = 0.5 per image. uint8 in, uint8 out, same shape; pad=0 and flip=False
    returns `x_uint8` itself."""
    draws = draw_augment(x_uint8.shape[0], pad=pad, flip=flip, generator=generator, device=x_uint8.device)
    return apply_augment(x_uint8, draws, pad=pad)
