"""Hinton knowledge distillation (Hinton, Vinyals, Dean 2015), with logit standardisation as an option.

    L = ce_weight·CE(s, y) + alpha·τ²·KL(softmax(t/τ) ‖ softmax(s/τ))

`logit_stand=true` (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024; reference code
sunshangquan/logit-standardization-KD, `mdistiller/distillers/KD.py`) replaces s and t by their per-sample z-scores
(`core.losses.standardize`) before the division by τ, which then plays the paper's "base temperature". The
reference's `--logit-stand` flag also swaps in its own KD weight and base temperature (`tools/train.py`); here those
are the plain options `alpha` and `temperature`, set by the preset method=kd_ls (with its per-pair table), not by
the switch. Oracle KD, which is this KD on another teacher input, reads the switch too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from oracle_kd.core.batch import Batch
from oracle_kd.core.losses import kd_loss, standardize
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import WHEN_SET, MethodConfig, TermsDistiller
from oracle_kd.methods.registry import method_entry, register_method


@dataclass
class KDConfig(MethodConfig):
    """L = ce_weight·CE(s(x), y) + alpha·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)); τ = 4 as in the paper's KD baseline.

    logit_stand: z-score both logits per sample first (LSKD). It was added after KD runs were stored, so it is
    part of a run's identity only when on. `alpha_by_pair` / `temperature_by_pair` ("teacher-student" → value):
    per-pair tables resolved before a run (`for_pair`), so not part of its identity.
    """

    name: str = "kd"
    alpha: float = 1.0
    temperature: float = 4.0
    logit_stand: bool = dataclasses.field(default=False, metadata={"identity": WHEN_SET})
    alpha_by_pair: Optional[dict[str, float]] = dataclasses.field(default_factory=dict, metadata={"identity": False})
    temperature_by_pair: Optional[dict[str, float]] = dataclasses.field(default_factory=dict,
                                                                       metadata={"identity": False})

    def validate(self) -> None:
        super().validate()
        require(self.alpha >= 0, "method.alpha", self.alpha, "must be >= 0")
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")
        for pair, alpha in (self.alpha_by_pair or {}).items():
            require(alpha >= 0, f"method.alpha_by_pair.{pair}", alpha, "must be >= 0")
        for pair, tau in (self.temperature_by_pair or {}).items():
            require(tau > 0, f"method.temperature_by_pair.{pair}", tau, "must be > 0")
        if self.logit_stand:  # inherited by every config built on this one: a method whose loss ignores it refuses it
            require(getattr(method_entry(self.name)[0], "reads_logit_stand", False), "method.logit_stand", True,
                    f"is not an option of method {self.name} (its loss does not standardise logits)")


def standardized(s_logits: torch.Tensor, t_logits: torch.Tensor,
                 on: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) z-scored per sample when `on` (logit standardisation), else as given."""
    return (standardize(s_logits), standardize(t_logits)) if on else (s_logits, t_logits)


@register_method("kd", KDConfig, paper="Hinton, Vinyals, Dean, NIPS workshop 2015", year=2015,
                 code="HobbitLong/RepDistiller: distiller_zoo/KD.py")
class KD(TermsDistiller):
    """Response distillation from the teacher's logits on `teacher_input()` (plain x here; Oracle KD
    overrides it)."""

    cfg: KDConfig
    reads_logit_stand: ClassVar[bool] = True  # its loss honours cfg.logit_stand (KDConfig.validate checks it)

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        s, t = standardized(student[0], teacher[0], self.cfg.logit_stand)
        return {"kd": self.cfg.alpha * kd_loss(s, t, self.cfg.temperature)}
