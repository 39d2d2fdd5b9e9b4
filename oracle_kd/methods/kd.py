"""Hinton knowledge distillation (Hinton, Vinyals, Dean 2015)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oracle_kd.core.batch import Batch
from oracle_kd.core.losses import kd_loss
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import Distiller, MethodConfig
from oracle_kd.methods.registry import register_method


@dataclass
class KDConfig(MethodConfig):
    """L = ce_weight·CE(s(x), y) + alpha·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)); τ = 4 as in the paper's KD baseline."""

    name: str = "kd"
    alpha: float = 1.0
    temperature: float = 4.0

    def validate(self) -> None:
        super().validate()
        require(self.alpha >= 0, "method.alpha", self.alpha, "must be >= 0")
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")


@register_method("kd", KDConfig, paper="Hinton, Vinyals, Dean, NIPS workshop 2015", year=2015,
                 code="HobbitLong/RepDistiller: distiller_zoo/KD.py")
class KD(Distiller):
    """Response distillation from the teacher's logits on `teacher_input()` (plain x here; Oracle KD
    overrides it)."""

    cfg: KDConfig

    def forward_train(self, batch: Batch, epoch: int,
                      teacher_out: TeacherOut | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        t_logits, _ = self.teacher_out(batch, teacher_out)
        s_logits, _ = self.student(x)
        return s_logits, {
            "ce": self.ce_loss(s_logits, y),
            "kd": self.cfg.alpha * kd_loss(s_logits, t_logits, self.cfg.temperature),
        }
