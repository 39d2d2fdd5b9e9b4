"""Neuron Selectivity Transfer (Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
Transfer", arXiv 2017), following mdistiller's `NST` (mdistiller/distillers/NST.py; RepDistiller's
distiller_zoo/NST.py computes the same loss).

Each channel of a stage map is one sample of a distribution over positions: its activation pattern flattened over
H·W and scaled to unit L2 norm, f_i ∈ R^{HW}. The student's channels should be distributed like the teacher's,
measured by the squared maximum mean discrepancy with the polynomial kernel k(a, b) = (aᵀb)² (degree 2, c = 0):

    MMD²(S, T) = mean_{i,j} k(t_i, t_j) + mean_{i,j} k(s_i, s_j) − 2·mean_{i,j} k(s_i, t_j)

(means over the batch and over all channel pairs, i.e. divided by B·C_t², B·C_s² and B·C_s·C_t), summed over the
stage outputs `Features.stages[1:]` (post-ReLU in the CIFAR ResNets, as mdistiller's `feats[1:]`);
L = ce_weight·CE + weight·Σ_stages MMD². Defaults: mdistiller's CE 1, feature weight 50, with no other factor in
front of MMD² (the weight is tuned for the code's loss as written).

Memory: the reference builds every kernel value through a broadcast product of shape (B, C, C, H·W) before summing
over positions (about 1 GB at the first stage of resnet8x4 at batch 64). The kernel sums are Gram matrices: with
S, T the (C, HW) normalised maps of one sample, Σ_{i,j} k(s_i, t_j) = ‖S Tᵀ‖_F² = ⟨SᵀS, TᵀT⟩_F, so each sum takes
either the (C_s, C_t) product or the two (HW, HW) ones, whichever is smaller (wide, small late stages: the latter).
Same value, at most B·min(C_s·C_t, HW²) memory. Computed in fp32 (fp64 in an fp64 run) with autocast off: a bf16
Gram of unit vectors loses the differences that MMD² is made of.

Pairs: stage outputs are paired one to one, so teacher and student must have as many stages (a pair that does not
is refused when the method is built, as AT does; mdistiller's `zip` would silently drop the extra stages). Widths
may differ (the kernel compares channels by their spatial patterns). Spatial sizes that differ are handled as in
mdistiller: the larger map is average-pooled to the smaller one's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from oracle_kd.core.losses import require_pairs, to_common_size
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.errors import require
from oracle_kd.methods.base import MethodConfig, StagePairs
from oracle_kd.methods.registry import register_method


@dataclass
class NSTConfig(MethodConfig):
    """L = ce_weight·CE + weight·Σ_stages MMD²_poly(normalised channel maps); mdistiller's defaults (CE 1, 50)."""

    name: str = "nst"
    weight: float = 50.0

    def validate(self) -> None:
        super().validate()
        require(self.weight >= 0, "method.weight", self.weight, "must be >= 0")


def channel_distributions(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H·W): each channel's map flattened and scaled to unit L2 norm (an all-zero channel stays zero)."""
    return F.normalize(at_least_fp32(f).flatten(2), dim=2)


def kernel_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ over the batch and all channel pairs of (a_iᵀb_j)² for (B, C_a, P) and (B, C_b, P): ‖A Bᵀ‖_F² per sample
    from the (C_a, C_b) product, or the equal ⟨AᵀA, BᵀB⟩_F from two (P, P) products when those are smaller."""
    if a.shape[1] * b.shape[1] <= a.shape[2] ** 2:
        return (a @ b.transpose(1, 2)).pow(2).sum()
    return ((a.transpose(1, 2) @ a) * (b.transpose(1, 2) @ b)).sum()


def poly_mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """MMD² with k(a, b) = (aᵀb)² between the channel distributions of two (B, C, H, W) maps of the same (H, W),
    from Gram matrices; the teacher's self-term is a constant (no gradient), as in the reference."""
    s, t = channel_distributions(f_s), channel_distributions(f_t)
    b, c_s, c_t = s.shape[0], s.shape[1], t.shape[1]
    k_tt = (kernel_sum(t, t) / (b * c_t * c_t)).detach()
    k_ss = kernel_sum(s, s) / (b * c_s * c_s)
    k_st = kernel_sum(s, t) / (b * c_s * c_t)
    return k_tt + k_ss - 2 * k_st


def nst_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ over paired (B, C, H, W) maps of MMD²_poly, each pair first brought to the smaller map's size."""
    require_pairs("NST", student_feats, teacher_feats)
    with torch.autocast(student_feats[0].device.type, enabled=False):
        total = torch.zeros((), device=student_feats[0].device)
        for f_s, f_t in zip(student_feats, teacher_feats):
            total = total + poly_mmd(*to_common_size(f_s, f_t))
    return total


@register_method("nst", NSTConfig, paper="Huang & Wang, arXiv 2017", year=2017,
                 code="megvii-research/mdistiller: mdistiller/distillers/NST.py")
class NST(StagePairs):
    """Feature distillation on the per-channel spatial distributions of the stage outputs (`stages[1:]`)."""

    cfg: NSTConfig

    def stage_term(self, student_stages: list[torch.Tensor], teacher_stages: list[torch.Tensor]) -> torch.Tensor:
        return self.cfg.weight * nst_loss(student_stages, teacher_stages)
