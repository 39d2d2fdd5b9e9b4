"""Similarity-Preserving KD (Tung & Mori, ICCV 2019), following mdistiller's `SP`.

Inputs that the teacher finds alike should be alike to the student: per batch, each network's B×B similarity
matrix G = Q·Qᵀ (Q: the last stage's map of each image, flattened), each row L2-normalised, and the student
matches the teacher's rows. G is B×B whatever the maps' channels and sizes, so any teacher fits any student.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from oracle_kd.core.batch import Batch
from oracle_kd.core.losses import require_pairs
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import MethodConfig, TermsDistiller
from oracle_kd.methods.registry import register_method


@dataclass
class SPConfig(MethodConfig):
    """L = ce_weight·CE + beta·Σ_maps ‖Ĝ_s − Ĝ_t‖_F² / B², Ĝ = row-normalised Q·Qᵀ (the paper's γ is `beta`)."""

    name: str = "sp"
    beta: float = 3000.0

    def validate(self) -> None:
        super().validate()
        require(self.beta >= 0, "method.beta", self.beta, "must be >= 0")


def similarity(f: torch.Tensor) -> torch.Tensor:
    """Ĝ: the (B, B) Gram matrix of the flattened maps, each row scaled to unit L2 norm, in fp32."""
    q = at_least_fp32(f).flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def sp_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ over paired maps of ‖Ĝ_s − Ĝ_t‖_F² / B² (B: the batch size)."""
    require_pairs("SP", student_feats, teacher_feats)
    total = torch.zeros((), device=student_feats[0].device)
    for f_s, f_t in zip(student_feats, teacher_feats):
        b = f_s.shape[0]
        total = total + (similarity(f_s) - similarity(f_t)).pow(2).sum() / (b * b)
    return total


@register_method("sp", SPConfig, paper="Tung & Mori, ICCV 2019", year=2019,
                 code="megvii-research/mdistiller: mdistiller/distillers/SP.py")
class SP(TermsDistiller):
    """Feature distillation on the batch similarities of the last stage's output (`Features.stages[-1]`)."""

    cfg: SPConfig

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {"sp": self.cfg.beta * sp_loss(student[1].stages[-1:], teacher[1].stages[-1:])}
