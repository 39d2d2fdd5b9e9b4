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

from oracle_kd.core.losses import attention_map, require_pairs, to_common_size
from oracle_kd.errors import require
from oracle_kd.methods.base import MethodConfig, StagePairs
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

    Each pair is first brought to the smaller map's size (`to_common_size`).
    """
    require_pairs("AT", student_feats, teacher_feats)
    total = torch.zeros((), device=student_feats[0].device)
    for f_s, f_t in zip(student_feats, teacher_feats):
        f_s, f_t = to_common_size(f_s, f_t)
        total = total + (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
    return total


@register_method("at", ATConfig, paper="Zagoruyko & Komodakis, ICLR 2017", year=2017,
                 code="megvii-research/mdistiller: mdistiller/distillers/AT.py")
class AT(StagePairs):
    """Feature distillation on the attention maps of the stage outputs (`Features.stages[1:]`)."""

    cfg: ATConfig

    def stage_term(self, student_stages: list[torch.Tensor], teacher_stages: list[torch.Tensor]) -> torch.Tensor:
        return self.cfg.beta * at_loss(student_stages, teacher_stages, self.cfg.p)
