"""DIST: Knowledge Distillation from A Stronger Teacher (Huang, You, Wang, Qian, Xu; NeurIPS 2022), following the
official loss in hunto/image_classification_sota `lib/models/losses/dist_kd.py` (the DIST_KD repository's submodule)
and its CIFAR recipe `configs/strategies/distill/dist_cifar.yaml`.

KL asks the student for the teacher's exact probabilities, which a much weaker student cannot give. DIST asks only
for the same *relations*: with Y = softmax(z/τ) (B × C),

    inter = τ²·(1 − mean_i ρ(Y_s[i, :], Y_t[i, :]))   (each sample's ranking of the classes)
    intra = τ²·(1 − mean_c ρ(Y_s[:, c], Y_t[:, c]))   (each class's ranking of the samples in the batch)
    L     = ce_weight·CE + kd_weight·(beta·inter + gamma·intra)

ρ is Pearson's correlation, kept as the reference computes it: the cosine of the mean-centred vectors,
a·b / (|a|·|b| + eps) with eps = 1e-8 added to the product of the norms (torchdistill's `DISTLoss` uses
`F.cosine_similarity`, which bounds the norms instead: a different number when a row or column hardly varies).
A constant vector therefore has ρ = 0, not NaN. ρ ignores any positive affine change of either side, so a student
whose probabilities are the teacher's mixed with the uniform distribution already has (nearly) zero loss.

The intra term relates the samples of one batch: it is computed on the batch the distiller is given (one rank's
shard under DDP, as the reference does per GPU), and with one sample per batch it is τ² (no variation to match).

Defaults are the CIFAR recipe `dist_t4` (β 1, γ 1, τ 4) with `kd_loss_weight` 2 and `ori_loss_weight` 1. The
ImageNet recipe (`kd: dist`) is τ 1 with the same weights.
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

# The reference's guard in ρ's denominator (|a|·|b| + EPS).
EPS = 1e-8


@dataclass
class DISTConfig(MethodConfig):
    """L = ce_weight·CE + kd_weight·(beta·inter + gamma·intra), both relations of softmax(z/τ); the CIFAR `dist_t4`
    recipe (β = γ = 1, τ = 4, KD weight 2, CE 1)."""

    name: str = "dist"
    kd_weight: float = 2.0
    beta: float = 1.0
    gamma: float = 1.0
    temperature: float = 4.0

    def validate(self) -> None:
        super().validate()
        require(self.kd_weight >= 0, "method.kd_weight", self.kd_weight, "must be >= 0")
        require(self.beta >= 0, "method.beta", self.beta, "must be >= 0")
        require(self.gamma >= 0, "method.gamma", self.gamma, "must be >= 0")
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """ρ of each row of `a` with the same row of `b`: centred a·b / (|a|·|b| + eps), the reference's placement."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (inter, intra): τ²·(1 − mean ρ) over the samples' class rows and over the classes' batch columns
    of softmax(z/τ), in fp32 at least."""
    tau = float(temperature)
    y_s = torch.softmax(at_least_fp32(student_logits) / tau, dim=1)
    y_t = torch.softmax(at_least_fp32(teacher_logits) / tau, dim=1)
    inter = (1 - pearson_rows(y_s, y_t).mean()) * tau * tau
    intra = (1 - pearson_rows(y_s.t(), y_t.t()).mean()) * tau * tau
    return inter, intra


@register_method("dist", DISTConfig, paper="Huang, You, Wang, Qian, Xu, NeurIPS 2022", year=2022,
                 code="hunto/image_classification_sota: lib/models/losses/dist_kd.py")
class DIST(TermsDistiller):
    """Logit distillation by correlation, within each sample (inter-class) and within each class over the batch
    (intra-class)."""

    cfg: DISTConfig

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        inter, intra = dist_terms(student[0], teacher[0], self.cfg.temperature)
        w = self.cfg.kd_weight
        return {"inter": w * self.cfg.beta * inter, "intra": w * self.cfg.gamma * intra}
