"""`train.optimizer=dot`: the Distillation-Oriented Trainer (Zhao et al., ICCV 2023), as mdistiller steps it.

DOT is SGD with two momenta: the task term (the method's `ce`) is accumulated with momentum 0.9 − δ and the
distillation terms (every other term) with 0.9 + δ, so that the distillation gradient, smoother across
steps, dominates the update. Each step takes two backward passes through one forward:

    g_kd = ∂(Σ distillation terms)/∂θ,  g_ce = ∂(ce)/∂θ
    for θ with a task gradient:  d = g_ce + wd·θ;  b_ce ← μ·b_ce + d;  θ ← θ − lr·b_ce
    for θ with a kd gradient:    b_kd ← μ_kd·b_kd + g_kd;            θ ← θ − lr·b_kd

μ = 0.9 − δ and μ_kd = 0.9 + δ for parameters with both gradients; a parameter with only one of them (a
FitNet regressor has no task gradient) uses the mean (μ + μ_kd)/2, and takes its weight decay in the
distillation update. A buffer's first value is its first gradient (no decay on a kd-only parameter's first
step), as the reference has it. Both buffers are per-parameter optimizer state, so last.pt carries them.

It is an optimizer rather than a method because the paper applies it to several methods (KD, DKD, CRD):
`train.optimizer=dot` works with any method whose loss has a `ce` term and distillation terms.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from oracle_kd.errors import ConfigError

TASK_TERM = "ce"


class DOT(torch.optim.Optimizer):
    """SGD with one momentum buffer for the task gradient and one for the distillation gradient."""

    def __init__(self, params: Iterable[nn.Parameter], *, lr: float, momentum: float, momentum_kd: float,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, momentum_kd=momentum_kd, weight_decay=weight_decay))
        if len(self.param_groups) != 1:
            raise ValueError("DOT steps one parameter group")

    def backward_step(self, losses: dict[str, torch.Tensor], loss_scale: float = 1.0) -> None:
        """Both backward passes and the update: what `train_step` does in place of backward + step."""
        if TASK_TERM not in losses or len(losses) < 2:
            raise ConfigError(f"train.optimizer=dot steps the task term '{TASK_TERM}' apart from the distillation "
                              f"terms, but this method's loss has the terms {sorted(losses)}")
        distill = sum(v for k, v in losses.items() if k != TASK_TERM)
        self.zero_grad(set_to_none=True)
        (distill * loss_scale).backward(retain_graph=True)
        params = self.param_groups[0]["params"]
        kd_grads = [(p, p.grad) for p in params if p.grad is not None]
        self.zero_grad(set_to_none=True)
        (losses[TASK_TERM] * loss_scale).backward()
        self._update(kd_grads)

    @torch.no_grad()
    def _update(self, kd_grads: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
        group = self.param_groups[0]
        lr, wd = group["lr"], group["weight_decay"]
        mom, mom_kd = group["momentum"], group["momentum_kd"]
        mean = (mom + mom_kd) / 2.0
        task = [p for p in group["params"] if p.grad is not None]
        has_task, has_kd = {id(p) for p in task}, {id(p) for p, _ in kd_grads}
        for p in task:
            d = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
            self._accumulate(p, "momentum_buffer", d, mom if id(p) in has_kd else mean)
            p.add_(self.state[p]["momentum_buffer"], alpha=-lr)
        for p, g in kd_grads:
            state = self.state[p]
            if "momentum_kd_buffer" in state and id(p) not in has_task and wd != 0:
                g = g.add(p, alpha=wd)
            self._accumulate(p, "momentum_kd_buffer", g, mom_kd if id(p) in has_task else mean)
            p.add_(state["momentum_kd_buffer"], alpha=-lr)

    def _accumulate(self, p: nn.Parameter, name: str, d: torch.Tensor, momentum: float) -> None:
        """b ← momentum·b + d, or b = d on the first step."""
        state = self.state[p]
        if name not in state:
            state[name] = d.detach().clone()
        else:
            state[name].mul_(momentum).add_(d)
