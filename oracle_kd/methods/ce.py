"""Plain cross-entropy training: how teachers and scratch baselines are made."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oracle_kd.core.batch import Batch
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.methods.base import Distiller, MethodConfig
from oracle_kd.methods.registry import register_method


@dataclass
class CEConfig(MethodConfig):
    name: str = "ce"


@register_method("ce", CEConfig)
class CrossEntropy(Distiller):
    """No teacher: L = ce_weight · CE(s(x), y)."""

    needs_teacher = False

    def forward_train(self, batch: Batch, epoch: int,
                      teacher_out: TeacherOut | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        logits, _ = self.student(x)
        return logits, {"ce": self.ce_loss(logits, y)}
