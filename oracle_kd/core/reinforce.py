"""Step A of Oracle KD: the relevance-reinforced input x*.

    x* = x − γ · |x| ⊙ ∂CE(teacher(x), y)/∂x

One implementation, shared by the oracle method, the oracle-teacher analysis, the γ tuner and runs that
share a batch (the input gradient does not depend on γ, so it is computed once for every γ).
Only the input gradient is computed (`torch.autograd.grad` w.r.t. x with a frozen teacher), which
skips the parameter-gradient work the released code did through `loss.backward()`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.core.precision import at_least_fp32

REDUCTIONS = ("mean", "sum")


def input_gradient(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, *, reduction: str = "mean",
                   mean_over: int | None = None) -> torch.Tensor:
    """∂CE(teacher(x), y)/∂x for a teacher in eval mode (see `input_gradient_and_output`)."""
    return input_gradient_and_output(teacher, x, y, reduction=reduction, mean_over=mean_over)[0]


def input_gradient_and_output(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, *, reduction: str = "mean",
                              mean_over: int | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, Features]]:
    """∂CE(teacher(x), y)/∂x for a teacher in eval mode, and teacher(x) itself (logits and Features, detached):
    the forward the gradient needs is the plain teacher pass too, so runs that read teacher(x) need not take it
    again.

    reduction="mean" (the released code) differentiates the batch-mean CE, so each sample moves by γ/B;
    "sum" differentiates the per-sample sum, which makes γ independent of the batch size. `mean_over`
    (DDP: the global batch size when x is one rank's shard) is the B of the mean, so a shard moves exactly
    as in one process."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, feats = teacher(x_in)
        if reduction == "mean" and mean_over is not None and mean_over != y.numel():
            loss = F.cross_entropy(at_least_fp32(logits), y, reduction="sum") / mean_over
        else:
            loss = F.cross_entropy(at_least_fp32(logits), y, reduction=reduction)
        (grad,) = torch.autograd.grad(loss, x_in)
    return grad, (logits.detach(), feats.detach())


def reinforced(x: torch.Tensor, grad: torch.Tensor, gamma: float) -> torch.Tensor:
    """x − γ·|x|⊙grad, detached: one step of Step A from a computed input gradient."""
    x = x.detach()
    return (x - gamma * x.abs() * grad).detach()


def reinforce(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, *, gamma: float,
              reduction: str = "mean", rec_num: int = 1, mean_over: int | None = None) -> torch.Tensor:
    """Return x* (detached) for a teacher in eval mode; rec_num > 1 repeats the step from the previous,
    detached x* (see `input_gradient` for reduction and mean_over)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if gamma == 0:
        return x.detach()
    x_cur = x.detach()
    for _ in range(rec_num):
        x_cur = reinforced(x_cur, input_gradient(teacher, x_cur, y, reduction=reduction, mean_over=mean_over), gamma)
    return x_cur
