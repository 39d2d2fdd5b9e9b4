"""The precision losses and statistics are computed in: float32 at least.

Activations that autocast left in bf16/fp16 are raised to float32 before a softmax, a mean or a sum; float32
and float64 tensors are kept as they are, so a `hardware.precision=fp64` run stays float64 from the batch to
the loss (which is what makes equality checks across processes and layouts tight on every CPU)."""

from __future__ import annotations

import torch

WIDE = (torch.float32, torch.float64)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32 when it is narrower (bf16, fp16), else `t` itself."""
    return t if t.dtype in WIDE else t.float()
