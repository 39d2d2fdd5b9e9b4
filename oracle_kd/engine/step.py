"""The default training step, evaluation, the learning-rate schedule and the optimizer.

The runner and the benchmark take the very same step (`train_step`), so what the benchmark times is
what a run does."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.config import TrainConfig
from oracle_kd.core.batch import Batch
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.data import BatchLoader, FolderLoader
from oracle_kd.engine import distributed
from oracle_kd.engine.dot import DOT

ForwardTrain = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


def make_optimizer(params: Iterable[nn.Parameter], t: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, as every recipe of the paper and of mdistiller uses; or DOT (`train.optimizer=dot`),
    SGD whose task and distillation gradients have their own momenta (0.9 ∓ δ)."""
    if t.optimizer == "dot":
        return DOT(params, lr=t.lr, momentum=t.momentum - t.dot_delta, momentum_kd=t.momentum + t.dot_delta,
                   weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov)


def lr_at(t: TrainConfig, epoch: int, progress: float = 1.0) -> float:
    """The learning rate at `progress` ∈ (0, 1] through (1-based) `epoch`: a linear per-step warm-up over
    the first `warmup_epochs`, then ×lr_decay after each milestone (MultiStepLR's convention: milestone m
    lowers the rate from epoch m+1 on). A pure function of the position in training, so resuming needs no
    scheduler state beyond the epoch number. Past the main epochs (a later phase) the last rate goes on."""
    if epoch <= t.warmup_epochs:
        return t.lr * (epoch - 1 + progress) / t.warmup_epochs
    return t.lr * t.lr_decay ** sum(1 for m in t.milestones if m < epoch)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(forward_train: ForwardTrain, optimizer: torch.optim.Optimizer, batch: Batch,
               epoch: int, amp: contextlib.AbstractContextManager, loss_scale: float = 1.0,
               teacher_out: TeacherOut | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step, exactly as the runner takes it (the benchmark times this very function).

    Returns (student logits, loss terms, total loss), all still on the device: nothing here waits for
    the device. `loss_scale` multiplies the loss before backward (DDP uses it for uneven shards);
    `teacher_out` is the teacher's output on this batch when the engine computed it for several runs. An
    optimizer with its own `backward_step(losses, loss_scale)` (DOT: one backward per kind of term) takes
    the backward passes and the update itself."""
    with amp:
        logits, losses = forward_train(batch, epoch, teacher_out)
    loss = sum(losses.values())
    own_step = getattr(optimizer, "backward_step", None)
    if own_step is not None:
        own_step(losses, loss_scale)
        return logits, losses, loss
    optimizer.zero_grad(set_to_none=True)
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    optimizer.step()
    return logits, losses, loss


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader | FolderLoader, amp: contextlib.AbstractContextManager | None = None,
             env: distributed.DistEnv = distributed.DistEnv()) -> dict[str, float]:
    """Top-1, top-5 (top-k with k = min(5, classes)) in % and mean CE on a test loader; under DDP each
    rank evaluates its share of the split and the counts are summed."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    device = param.device
    c1 = torch.zeros((), device=device)
    c5 = torch.zeros((), device=device)
    loss = torch.zeros((), device=device, dtype=param.dtype)  # float64 in fp64 runs
    n = torch.zeros((), device=device)
    for x, y in loader.epoch(0):
        with amp or contextlib.nullcontext():
            logits, _ = model(x)
        logits = at_least_fp32(logits)
        loss += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        c1 += (top[:, 0] == y).sum()
        c5 += (top == y[:, None]).any(dim=1).sum()
        n += y.numel()
    model.train(was_training)
    c1, c5, loss, n = distributed.all_reduce_sum(torch.stack([c1, c5, loss, n]), env).tolist()
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n}
