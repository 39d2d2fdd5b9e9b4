"""CTKD, Curriculum Temperature for Knowledge Distillation (Li, Li, Yang, Zhao, Song, Luo, Li, Yang; AAAI 2023), the
global-temperature variant as its official code trains it (zhengli97/CTKD: `models/temp_global.py` for the
temperature and its gradient reversal, `train_student.py` for the λ schedule and defaults, `helper/loops.py`,
`distiller_zoo/KD.py` for the loss).

KD whose temperature is learnt adversarially. One scalar θ (initialised at 1, as the code's `torch.ones(1)`) gives

    T = t_start + t_end·σ(θ)                      (1 + 20·σ(1) ≈ 15.62 at the start; T stays in (t_start, t_start+t_end))
    L = ce_weight·CE(s, y) + alpha·T²·KL(softmax(t/T) ‖ softmax(s/T))

with θ reaching T through a gradient reversal layer: identity forward, and backward the gradient reaching θ is
multiplied by λ_e. The code's λ is the multiplier itself, sign included, following a cosine over the first
`decay_loops` epochs from `decay_max` 0 to `decay_min` −1 and then constant:

    λ_e = decay_min + (decay_max − decay_min)·(1 + cos(π·min(e, decay_loops)/decay_loops))/2,   e = 1, 2, ...

so λ is −0.024 at epoch 1, −0.5 at epoch 5 and −1 from epoch 10 on: the student descends L while θ ascends it,
ever harder (the paper's easy-to-hard curriculum). λ changes once per epoch (the code computes it before each
epoch's loop), and T² is the learnt T, so θ's gradient runs through both softmaxes and the T² factor.

θ is one of the method's trainable parameters: the student's SGD steps it with the same learning rate, momentum and
weight decay (the code appends the temperature module to the optimizer's list), and a checkpoint holds it. Defaults
are `train_student.py`'s (-r 0.1 -a 0.9, --t_start 1 --t_end 20) and its CIFAR script's (--decay_max 0
--decay_min -1 --decay_loops 10); that script trains with batch 64, lr 0.05 (0.01 for MobileNetV2/ShuffleNet
students), 240 epochs, ×0.1 at 150/180/210, weight decay 5e-4. Not kept: the code's `LinearDecay` alternative, the
instance-wise temperature variant (released only as a download) and CTKD on top of other losses (its DKD+CTKD).

`logit_stand=true` is the LSKD copy of this code (sunshangquan/logit-standardization-KD, `CTKD/distiller_zoo/KD.py`):
the KL of the per-sample z-scores of s and t (`core.losses.standardize`) at the learnt T, still ×T². That copy's
`train_student.py` picks the standardised loss when its `--logit_stand` flag is *absent* (inverted); here the option
means what it says. The temperature in the current value of θ is `temperature()`; the engine logs loss terms only,
so it is not recorded per epoch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.losses import kd_loss
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import WHEN_SET, MethodConfig, TermsDistiller
from oracle_kd.methods.kd import standardized
from oracle_kd.methods.registry import register_method

THETA_INIT = 1.0  # the official Global_T's torch.ones(1)


@dataclass
class CTKDConfig(MethodConfig):
    """L = ce_weight·CE + alpha·T²·KL at T = t_start + t_end·σ(θ), θ's gradient reversed and scaled by the
    cosine-scheduled λ (decay_max → decay_min over decay_loops epochs). The official code's defaults."""

    name: str = "ctkd"
    ce_weight: float = 0.1
    alpha: float = 0.9
    t_start: float = 1.0
    t_end: float = 20.0
    decay_max: float = 0.0
    decay_min: float = -1.0
    decay_loops: int = 10
    logit_stand: bool = dataclasses.field(default=False, metadata={"identity": WHEN_SET})

    def validate(self) -> None:
        super().validate()
        require(self.alpha >= 0, "method.alpha", self.alpha, "must be >= 0")
        require(self.t_start > 0, "method.t_start", self.t_start, "must be > 0 (the lowest temperature)")
        require(self.t_end >= 0, "method.t_end", self.t_end, "must be >= 0 (the temperature's range above t_start)")
        require(self.decay_loops >= 1, "method.decay_loops", self.decay_loops, "must be >= 1 (epochs)")


def grl_scale(epoch: int, decay_max: float, decay_min: float, decay_loops: int) -> float:
    """λ at a 1-based epoch: the official `CosineDecay.get_value`, from decay_max (epoch 0) to decay_min (epoch
    decay_loops on)."""
    i = min(max(epoch, 0), decay_loops)
    return decay_min + (decay_max - decay_min) * (math.cos(math.pi * i / decay_loops) + 1.0) / 2.0


class _ScaledGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by `scale` (negative: a reversal)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.scale * grad, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The gradient reversal layer: x forward, scale·∂L/∂x backward."""
    return _ScaledGradient.apply(x, scale)


@register_method("ctkd", CTKDConfig, paper="Li et al., AAAI 2023", year=2023,
                 code="zhengli97/CTKD: models/temp_global.py")
class CTKD(TermsDistiller):
    """KD at a learnt global temperature, trained against the student through a scheduled gradient reversal."""

    cfg: CTKDConfig
    reads_logit_stand: ClassVar[bool] = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: CTKDConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        p = next(student.parameters())  # on the student's device and in its dtype (float64 in an fp64 run)
        self.theta = nn.Parameter(torch.full((), THETA_INIT, device=p.device, dtype=p.dtype))

    def grl_scale(self, epoch: int) -> float:
        return grl_scale(epoch, self.cfg.decay_max, self.cfg.decay_min, self.cfg.decay_loops)

    def temperature(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """T = t_start + t_end·σ(θ), a 0-dim tensor in fp32 at least (θ: this method's, unless given)."""
        theta = at_least_fp32(self.theta if theta is None else theta)
        return self.cfg.t_start + self.cfg.t_end * torch.sigmoid(theta)

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        temp = self.temperature(scale_gradient(self.theta, self.grl_scale(epoch)))
        s, t = standardized(student[0], teacher[0], self.cfg.logit_stand)
        return {"kd": self.cfg.alpha * kd_loss(s, t, temp)}
