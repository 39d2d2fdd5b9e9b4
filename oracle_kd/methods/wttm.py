"""TTM and WTTM: Knowledge Distillation Based on Transformed Teacher Matching (Zheng & Yang, ICLR 2024), following
the official zkxufo/TTM `distiller_zoo/ttm.py`, `distiller_zoo/wttm.py` and `train_student.py` (a RepDistiller fork).

KD softens both sides with one temperature. TTM softens the teacher only: its probabilities p raised to the power
γ and renormalised, q = p^γ / Σ_c p_c^γ, and the student's plain softmax matched to them. q is softmax(γ·z_t), the
teacher at temperature 1/γ, so TTM is KD with the student-side temperature (and KD's τ² factor) dropped; the paper
shows this adds a Rényi-entropy regulariser on the student. WTTM weighs each sample's KL by the power sum
U_γ(p) = Σ_c p_c^γ (before renormalising): for γ < 1 between 1 for a one-hot teacher and C^(1−γ) for a uniform one,
so samples on which the teacher hesitates count more.

    TTM  = mean_i KL(q_i ‖ softmax(z_s,i))
    WTTM = mean_i U_γ(p_i)·KL(q_i ‖ softmax(z_s,i))
    L    = ce_weight·CE + beta·(WTTM, or TTM with weighted=false)

The reference computes q as pow(softmax(z_t), γ) / its sum; here q = softmax(γ·log_softmax(z_t)) and
U_γ = exp(logsumexp(γ·log_softmax(z_t))), the same numbers in log space, where no class's p^γ underflows.

Defaults and where they come from (the repository's argparse gives `-r` (CE weight) 1, `--ttm_l` (γ) 1 and no
value for `-b` (KD weight) or `-a` (an extra KD term), so its README's runs fix them):
- ce_weight 1: `-r`'s default, used in every README run;
- gamma 0.2, beta 4: the only WTTM weights in the repository, its README's WTTM+CRD run on vgg13→vgg8
  (`--add wttm --ttm_l 0.2 -a 4`, where WTTM sits beside CRD at `-b 0.8`);
- no extra term: the README's TTM run sets `-a 0`.
The README's TTM run on vgg13→vgg8 is γ 0.1 with KD weight 45 (method=ttm gives it). A TTM weight does not suit
WTTM: U_γ is up to C^(1−γ) (≈ 63 for 100 classes at γ 0.1). The paper tunes γ and β per pair (its appendix A.4);
that table is not in the repository, so set method.gamma and method.beta per pair to reproduce the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from oracle_kd.core.batch import Batch
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import MethodConfig, TermsDistiller
from oracle_kd.methods.registry import register_method


@dataclass
class WTTMConfig(MethodConfig):
    """L = ce_weight·CE + beta·mean_i w_i·KL(softmax(γ·z_t) ‖ softmax(z_s)), w_i = Σ_c p_c^γ (WTTM) or 1
    (`weighted: false`, TTM); γ is the official `--ttm_l`, beta its `-b`, ce_weight its `-r`."""

    name: str = "wttm"
    beta: float = 4.0
    gamma: float = 0.2
    weighted: bool = True

    def validate(self) -> None:
        super().validate()
        require(self.beta >= 0, "method.beta", self.beta, "must be >= 0")
        require(self.gamma > 0, "method.gamma", self.gamma, "must be > 0 (the exponent of the teacher's probabilities)")


def transformed_teacher(teacher_logits: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q, U): log of the renormalised p^γ (B, C) and the power sum U = Σ_c p_c^γ (B,), in fp32 at least."""
    powered = float(gamma) * F.log_softmax(at_least_fp32(teacher_logits), dim=1)  # log p^γ
    log_u = torch.logsumexp(powered, dim=1, keepdim=True)
    return powered - log_u, log_u.squeeze(1).exp()


def ttm_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(q_i ‖ softmax(z_s,i)), U_γ(p_i)) for each sample: what TTM averages and what WTTM weighs it by."""
    log_q, u = transformed_teacher(teacher_logits, gamma)
    log_p_s = F.log_softmax(at_least_fp32(student_logits), dim=1)
    return (log_q.exp() * (log_q - log_p_s)).sum(dim=1), u


def wttm_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, gamma: float,
              weighted: bool = True) -> torch.Tensor:
    """mean_i U_γ(p_i)·KL_i (WTTM), or mean_i KL_i (TTM) when not `weighted`."""
    kl, u = ttm_per_sample(student_logits, teacher_logits, gamma)
    return (u * kl).mean() if weighted else kl.mean()


@register_method("wttm", WTTMConfig, paper="Zheng & Yang, ICLR 2024", year=2024,
                 code="zkxufo/TTM: distiller_zoo/wttm.py")
class WTTM(TermsDistiller):
    """Matching the power-transformed teacher with the student's untempered softmax, each sample weighted by how
    spread the teacher's prediction is (plain TTM with `weighted: false`)."""

    cfg: WTTMConfig

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        term = "wttm" if self.cfg.weighted else "ttm"
        return {term: self.cfg.beta * wttm_loss(student[0], teacher[0], self.cfg.gamma, self.cfg.weighted)}
