"""The strong view of a batch (MLKD's second view): its own random crop and flip, then RandAugment(2, 10) and
Cutout per image, as the FixMatch-style pipeline of MLKD's reference draws them, on uint8 tensors on the device.

Per image: two operations chosen with replacement from the 14 below, each at a magnitude uniform in its range
(the reference ignores the "10"), then a Cutout square of side U(0, 0.5)·width filled with (125, 123, 114),
centred at a uniform point and clipped to the image. Every draw comes from one generator per batch (seeded by
the batch key), not Python's `random` as in the reference, so a resumed or cohort run sees the same views.

Where it differs from the reference's PIL pipeline: the operations are torchvision's tensor ones (rotation,
shear and translation about the image centre rather than PIL's corner origin; shear by atan(v) degrees;
`Color` is a saturation change and is skipped on one-channel images); the ranges are symmetric, so the sign
conventions do not change the distribution.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from oracle_kd.data.augment import AugmentDraws, apply_augment, draw_augment

CUTOUT_FILL = (125, 123, 114)


def _colour(op: Callable[[Tensor, float], Tensor]) -> Callable[[Tensor, float], Tensor]:
    """A colour operation that needs three channels: identity on one-channel (digits) images."""
    return lambda img, v: op(img, v) if img.shape[0] == 3 else img


OPS: list[tuple[str, Callable[[Tensor, float], Tensor], float, float]] = [
    ("autocontrast", lambda img, v: TF.autocontrast(img), 0, 1),
    ("brightness", TF.adjust_brightness, 0.05, 0.95),
    ("color", _colour(TF.adjust_saturation), 0.05, 0.95),
    ("contrast", _colour(TF.adjust_contrast), 0.05, 0.95),
    ("equalize", lambda img, v: TF.equalize(img), 0, 1),
    ("identity", lambda img, v: img, 0, 1),
    ("posterize", lambda img, v: TF.posterize(img, max(1, int(v))), 4, 8),
    ("rotate", lambda img, v: TF.rotate(img, v), -30, 30),
    ("sharpness", TF.adjust_sharpness, 0.05, 0.95),
    ("shear_x", lambda img, v: TF.affine(img, 0.0, [0, 0], 1.0, [math.degrees(math.atan(v)), 0.0]), -0.3, 0.3),
    ("shear_y", lambda img, v: TF.affine(img, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(v))]), -0.3, 0.3),
    ("solarize", lambda img, v: TF.solarize(img, v) if v <= 255 else img, 0, 256),  # above 255: no pixel inverts
    ("translate_x", lambda img, v: TF.affine(img, 0.0, [round(v * img.shape[-1]), 0], 1.0, [0.0, 0.0]), -0.3, 0.3),
    ("translate_y", lambda img, v: TF.affine(img, 0.0, [0, round(v * img.shape[-2])], 1.0, [0.0, 0.0]), -0.3, 0.3),
]


def cutout(img: Tensor, size: float, cx: float, cy: float) -> Tensor:
    """A square of side `size` px with corner at (cx − size/2, cy − size/2) (floored, clipped) filled with grey;
    PIL's rectangle includes its far edge, so the fill does too."""
    if size <= 0:
        return img
    h, w = img.shape[-2:]
    x0, y0 = int(max(0.0, cx - size / 2.0)), int(max(0.0, cy - size / 2.0))
    x1, y1 = min(float(w), x0 + size), min(float(h), y0 + size)
    out = img.clone()
    fill = torch.tensor(CUTOUT_FILL[: img.shape[0]] if img.shape[0] == 3 else (CUTOUT_FILL[0],), dtype=img.dtype,
                        device=img.device)
    out[:, y0:int(y1) + 1, x0:int(x1) + 1] = fill[:, None, None]
    return out


def rand_augment(img: Tensor, g: torch.Generator, n: int = 2) -> Tensor:
    """RandAugment(n) and Cutout on one uint8 (C, H, W) image, every draw from `g` (a CPU generator)."""
    picks = torch.randint(0, len(OPS), (n,), generator=g).tolist()
    for k in picks:
        _, op, lo, hi = OPS[k]
        img = op(img, lo + (hi - lo) * torch.rand((), generator=g).item())
    side = torch.rand((), generator=g).item() * 0.5 * img.shape[-1]
    cx, cy = (torch.rand(2, generator=g) * torch.tensor([img.shape[-1], img.shape[-2]])).tolist()
    return cutout(img, side, cx, cy)


def strong_view(images: Tensor, key: int, *, pad: int, flip: bool) -> Tensor:
    """The strong view of a uint8 batch (B, C, H, W): its own crop and flip, then RandAugment and Cutout per
    image, all drawn from a generator seeded by `key`."""
    g = torch.Generator().manual_seed(key)
    draws = draw_augment(len(images), pad=pad, flip=flip, generator=g, device="cpu")
    draws = AugmentDraws(*(None if t is None else t.to(images.device) for t in (draws.offsets, draws.flipped)))
    cropped = apply_augment(images, draws, pad=pad)
    return torch.stack([rand_augment(img, g) for img in cropped])
