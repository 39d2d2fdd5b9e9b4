"""Probabilistic Knowledge Transfer (Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018), following mdistiller's `PKT` (mdistiller/distillers/PKT.py, itself the authors' code from
passalis/probabilistic_kt; RepDistiller's distiller_zoo/PKT.py is the same).

The student should place the batch's samples in its embedding with the same neighbourhood structure as the
teacher. On the classifier inputs (`Features.pooled`, (B, D), any D on either side), per network:

    x̂_i = x_i / (‖x_i‖ + eps)                 (a NaN from a NaN input is set to 0, as the reference does)
    K_ij = (x̂_iᵀ x̂_j + 1) / 2                  (cosine similarity moved into [0, 1]: the kernel)
    P_ij = K_ij / Σ_j K_ij                      (row i: the conditional probability of j given i)
    PKT = mean_{i,j} P^t_ij · log((P^t_ij + eps) / (P^s_ij + eps))

i.e. the KL divergence of each row of P^s from P^t, summed over j, averaged over the B² entries (not over the B
rows: the reference's `torch.mean`, which the default weight is tuned for). j = i is included, as in the code.
L = ce_weight·CE + weight·PKT. Defaults: mdistiller's CE 1, weight 30000, eps 1e-7.

The kernel's shift into [0, 1], the eps placements and the mean over B² are the code's, kept as they are.
The value is invariant to a positive scaling of either embedding (up to eps). Computed in fp32 (fp64 in an fp64
run) with autocast off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oracle_kd.core.batch import Batch
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import MethodConfig, TermsDistiller
from oracle_kd.methods.registry import register_method


@dataclass
class PKTConfig(MethodConfig):
    """L = ce_weight·CE + weight·mean_{i,j} P^t_ij log((P^t_ij + eps)/(P^s_ij + eps)); mdistiller's defaults."""

    name: str = "pkt"
    weight: float = 30000.0
    eps: float = 1e-7

    def validate(self) -> None:
        super().validate()
        require(self.weight >= 0, "method.weight", self.weight, "must be >= 0")
        require(self.eps >= 0, "method.eps", self.eps, "must be >= 0")


def conditional_probabilities(f: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """P (B, B): row-normalised (cosine + 1)/2 between the rows of a (B, D) embedding."""
    f = at_least_fp32(f).flatten(1)
    f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    f = torch.where(torch.isnan(f), torch.zeros_like(f), f)  # no boolean indexing: no host sync on a GPU
    k = (f @ f.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mean over the B×B entries of P^t · log((P^t + eps) / (P^s + eps)), in fp32 with autocast off."""
    with torch.autocast(student.device.type, enabled=False):
        p_s = conditional_probabilities(student, eps)
        p_t = conditional_probabilities(teacher, eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_method("pkt", PKTConfig, paper="Passalis & Tefas, ECCV 2018", year=2018,
                 code="megvii-research/mdistiller: mdistiller/distillers/PKT.py")
class PKT(TermsDistiller):
    """Relational distillation of the batch's cosine neighbourhoods in the classifier inputs (`pooled`)."""

    cfg: PKTConfig

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {"pkt": self.cfg.weight * pkt_loss(student[1].pooled, teacher[1].pooled, self.cfg.eps)}
