"""Relational Knowledge Distillation (Park, Kim, Lu & Cho, CVPR 2019), following mdistiller's `RKD`
(mdistiller/distillers/RKD.py; RepDistiller's distiller_zoo/RKD.py is the same loss).

The student transfers the teacher's relations between samples, not the samples' embeddings: on the classifier
inputs (`Features.pooled`, (B, D), any D on either side),

    distance-wise:  ψ_D(x_i, x_j) = ‖x_i − x_j‖ / μ,  μ = the mean of ‖x_i − x_j‖ over the pairs with a non-zero
                    distance (i ≠ j in practice: distances are clamped at √eps before the diagonal is zeroed)
    angle-wise:     ψ_A(x_i, x_j, x_k) = ⟨e_ij, e_ik⟩,  e_ij = (x_j − x_i)/‖x_j − x_i‖  (the cosine of the
                    angle at vertex i; 0 when j or k is i)
    L_D = mean_{i,j} smooth_L1(ψ_D^s − ψ_D^t),   L_A = mean_{i,j,k} smooth_L1(ψ_A^s − ψ_A^t)   (Huber, δ = 1)

L = ce_weight·CE + weight·(distance_weight·L_D + angle_weight·L_A), returned as the two terms "distance" and
"angle" (each already times `weight`). Defaults: mdistiller's CE 1, feature weight 1, distance 25, angle 50,
eps 1e-12, distances not squared (RepDistiller's RKDLoss uses the same 25 and 50).

Distances are computed as in the reference, from ‖x_i‖² + ‖x_j‖² − 2x_iᵀx_j clamped at eps (then the square
root unless `squared`), with the diagonal set to 0. Both relations are invariant to a scaling, rotation or
translation of either embedding: only the student's geometry up to similarity is asked for. Computed in fp32
(fp64 in an fp64 run) with autocast off. Where the reference selects the non-zero distances by boolean indexing
(a host sync on a GPU) this takes a masked sum over a count; a batch of one sample, where the reference's mean is
NaN, gives 0 here. The angle tensor is B×B×B (and B×B×D for the differences), as in the reference.
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
class RKDConfig(MethodConfig):
    """L = ce_weight·CE + weight·(distance_weight·L_D + angle_weight·L_A) on `pooled`; mdistiller's defaults."""

    name: str = "rkd"
    weight: float = 1.0
    distance_weight: float = 25.0
    angle_weight: float = 50.0
    eps: float = 1e-12
    squared: bool = False

    def validate(self) -> None:
        super().validate()
        for key in ("weight", "distance_weight", "angle_weight"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "must be >= 0")
        require(self.eps > 0, "method.eps", self.eps, "must be > 0 (it keeps the square root's gradient finite)")


def pairwise_distances(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """(B, B) Euclidean distances between the rows of e (squared if asked), clamped at eps, diagonal 0."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    eye = torch.eye(len(e), dtype=torch.bool, device=e.device)
    return torch.where(eye, torch.zeros_like(d), d)


def normalized_distances(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """ψ_D: the distances over their mean across the pairs whose distance is non-zero."""
    d = pairwise_distances(e, squared, eps)
    positive = d > 0
    mean = torch.where(positive, d, torch.zeros_like(d)).sum() / positive.sum().clamp(min=1)
    return d / torch.where(mean > 0, mean, torch.ones_like(mean))


def angles(e: torch.Tensor) -> torch.Tensor:
    """ψ_A (B, B, B): [i, j, k] = cosine at vertex i of the triangle (x_i, x_j, x_k); 0 where j = i or k = i."""
    directions = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = unit vector from x_i to x_j
    return directions @ directions.transpose(1, 2)


def rkd_terms(student: torch.Tensor, teacher: torch.Tensor, squared: bool = False,
              eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (L_D, L_A) between two (B, D) embeddings, in fp32 with autocast off; the teacher's relations
    carry no gradient."""
    with torch.autocast(student.device.type, enabled=False):
        s, t = at_least_fp32(student).flatten(1), at_least_fp32(teacher).flatten(1).detach()
        loss_d = F.smooth_l1_loss(normalized_distances(s, squared, eps), normalized_distances(t, squared, eps))
        loss_a = F.smooth_l1_loss(angles(s), angles(t))
    return loss_d, loss_a


@register_method("rkd", RKDConfig, paper="Park, Kim, Lu, Cho, CVPR 2019", year=2019,
                 code="megvii-research/mdistiller: mdistiller/distillers/RKD.py")
class RKD(TermsDistiller):
    """Relational distillation of the batch's distances and angles in the classifier inputs (`pooled`)."""

    cfg: RKDConfig

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        loss_d, loss_a = rkd_terms(student[1].pooled, teacher[1].pooled, self.cfg.squared, self.cfg.eps)
        w = self.cfg.weight
        return {"distance": w * self.cfg.distance_weight * loss_d, "angle": w * self.cfg.angle_weight * loss_a}
