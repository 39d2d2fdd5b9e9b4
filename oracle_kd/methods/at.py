"""Attention Transfer (Zagoruyko & Komodakis, ICLR 2017; "ATT" in the paper's tables), following
mdistiller's `AT`.

The student matches the teacher's normalised spatial attention maps after each of the three stages.
The maps have one value per position whatever the channel count, so teacher and student may differ
in width and depth; only the spatial sizes must agree, and the larger map is pooled to the smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.losses import attention_map, pool_to
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import Distiller, MethodConfig, probe_features
from oracle_kd.methods.registry import register_method


@dataclass
class ATConfig(MethodConfig):
    """L = ce_weight·CE + beta·Σ_stages mean((a(f_s) − a(f_t))²), a = attention map with exponent p. The mean over
    positions of unit-norm maps goes as 1/P: beta is rescaled on inputs under 32 px (`for_input`)."""

    SIZE_SCALED = {"beta": 1}

    name: str = "at"
    beta: float = 1000.0
    p: float = 2.0

    def validate(self) -> None:
        super().validate()
        require(self.beta >= 0, "method.beta", self.beta, "must be >= 0")
        require(self.p > 0, "method.p", self.p, "must be > 0")


def at_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], p: float = 2.0) -> torch.Tensor:
    """Σ over paired (B, C, H, W) maps of mean_{batch, positions}((a(f_s) − a(f_t))²), in fp32.

    Each pair is first pooled to the smaller map's size (`pool_to` is a no-op for the smaller one).
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"AT needs the same, non-zero number of student and teacher maps, "
                         f"got {len(student_feats)} and {len(teacher_feats)}")
    total = torch.zeros((), device=student_feats[0].device)
    for f_s, f_t in zip(student_feats, teacher_feats):
        size = (min(f_s.shape[-2], f_t.shape[-2]), min(f_s.shape[-1], f_t.shape[-1]))
        diff = attention_map(pool_to(f_s, size), p) - attention_map(pool_to(f_t, size), p)
        total = total + diff.pow(2).mean()
    return total


@register_method("at", ATConfig, paper="Zagoruyko & Komodakis, ICLR 2017", year=2017,
                 code="megvii-research/mdistiller: mdistiller/distillers/AT.py")
class AT(Distiller):
    """Feature distillation on the attention maps of the stage outputs (`Features.stages[1:]`)."""

    cfg: ATConfig

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: ATConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        input_shape = self.input_shape
        if input_shape is not None and teacher is not None:  # a pair AT cannot match is a config error, up front
            with torch.random.fork_rng(devices=[]):  # the probe must not move the run's RNG stream
                n_t = len(probe_features(teacher, input_shape)[1].stages) - 1
                n_s = len(probe_features(student, input_shape)[1].stages) - 1
            require(n_t == n_s and n_t > 0, "method", "at", f"pairs stage outputs one to one, but the teacher has "
                    f"{n_t} stages and the student {n_s}; pick models with as many stages")

    def forward_train(self, batch: Batch, epoch: int,
                      teacher_out: TeacherOut | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        _, t_feats = self.teacher_out(batch, teacher_out)
        s_logits, s_feats = self.student(x)
        return s_logits, {
            "ce": self.ce_loss(s_logits, y),
            "at": self.cfg.beta * at_loss(s_feats.stages[1:], t_feats.stages[1:], self.cfg.p),
        }
