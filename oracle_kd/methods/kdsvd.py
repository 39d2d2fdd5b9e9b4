"""KD-SVD (Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018),
following mdistiller's `KDSVD` (mdistiller/distillers/KDSVD.py; the authors' TensorFlow code is sseung0703/SSKD_SVD).

Each stage output (`Features.stages[1:]`) is compressed to its leading right singular vectors, and the student
transfers how those vectors of consecutive stages relate, through a radial basis function. Per sample, with X the
stage map viewed as a (C·H) × W matrix (mdistiller's `view(B, C·H, W)`), X = U Σ Vᵀ (`torch.linalg.svd`, reduced):

    teacher: V_t = the first k columns of V, s = Σ's first k values L2-normalised (k = 1: s = 1)
    student: the first k + 3 columns; for each teacher vector the student vector(s) with the largest |cosine| to
             it, signed to agree with it (V_s ← V_s·M, M_ab = sign(cos_ab) where |cos_ab| is its column's max)
    v = V·diag(s) for both (the student is scaled by the teacher's s, as in the reference)
    for stages l ≥ 1:  R_{a,b,c} = exp(−(v^l_{a,c} − v^{l−1}_{b,c})² / 8)   (a: row of stage l, b: of stage l−1)
    KDSVD = Σ_{l≥1} Σ_{batch,a,b,c} (R^s − R^t)² / B,   non-finite entries set to 0 (as the reference)

L = ce_weight·CE + weight·KDSVD. Defaults: mdistiller's k 1, CE 1, weight 1.

Kept from the reference: the (C·H) × W layout, so the singular vectors run over the map's width. The paper and
RepDistiller's port of the TensorFlow code factor the H·W × C matrix, whose vectors run over channels; that
layout needs teacher and student of the same width at every stage, which this one does not. Also kept: NaNs and
infinities in Σ, V (U is not used) and in the squared differences are zeroed; SVD in fp32 at least (fp64 in an
fp64 run, never bf16: autocast is off); student vectors that tie for the largest |cosine| are summed (the
reference's mask).

Changed, on purpose:
- Sign. An SVD returns each singular vector up to sign, and which sign depends on the library (LAPACK, cuSOLVER,
  their versions). Aligning the student to the teacher removes the student's sign, but the RBF compares stage l
  with stage l−1, so the loss changes if one of the teacher's stages flips and the other does not. The teacher's
  vectors are made canonical here: each is signed so that its entries sum to ≥ 0. For a post-ReLU (non-negative)
  map the leading vector has entries of one sign (Perron–Frobenius), so this picks the non-negative one, and the
  value equals the reference's whenever its library returned consistent signs across stages (the loss does not
  change if every stage flips at once).
- Gradients. The gradient of singular vectors involves 1/(σ_i² − σ_j²) over all pairs, so a sample whose map has
  repeated singular values (a rank-deficient map: dead channels, zero columns) gets NaN gradients, which the
  reference lets into the student's weights. Here the gradient reaching each stage map through the SVD has its
  non-finite entries set to 0, like the reference's forward values: such a sample adds nothing for that step.
- Sizes. The reference multiplies student and teacher vectors and so needs maps of equal width; a pair whose maps
  differ in size has the larger average-pooled to the smaller, as NST and VID do in mdistiller.
- Stage counts must agree (refused when built, as AT does); mdistiller's `zip` would drop the extra stages.

Cost: one batched SVD per stage and network per step. On a GPU `torch.linalg.svd` waits for the host (it reads
cuSOLVER's convergence flags), so KDSVD cannot keep the sync-free fast path that the other methods keep.
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

RBF_SCALE = 8.0  # the reference's exp(−d² / 8)
EXTRA_STUDENT_VECTORS = 3  # the student offers k + 3 candidate vectors to align with the teacher's k


@dataclass
class KDSVDConfig(MethodConfig):
    """L = ce_weight·CE + weight·KDSVD with k leading singular vectors per stage; mdistiller's defaults."""

    name: str = "kdsvd"
    weight: float = 1.0
    k: int = 1

    def validate(self) -> None:
        super().validate()
        require(self.weight >= 0, "method.weight", self.weight, "must be >= 0")
        require(self.k >= 1, "method.k", self.k, "must be >= 1 (the number of teacher singular vectors)")


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def right_singular_vectors(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, s) of a (B, C, H, W) map viewed as (B, C·H, W): the first n right singular vectors as columns, each
    L2-normalised (B, W, n'), and the first n singular values L2-normalised together (B, n'), n' = min(n, W, C·H);
    non-finite values zeroed. The gradient through the SVD has its non-finite entries zeroed too."""
    b, c, h, w = f.shape
    x = at_least_fp32(f).reshape(b, c * h, w)
    if x.requires_grad:
        x.register_hook(_finite)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = _finite(vh.transpose(-2, -1))[:, :, :n]
    return F.normalize(v, dim=1), F.normalize(_finite(s)[:, :n], dim=1)


def canonical_sign(v: torch.Tensor) -> torch.Tensor:
    """Each column of v (B, W, n) signed so that its entries sum to ≥ 0."""
    return v * torch.where(v.sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(v.dtype)


def align(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher column, the student column(s) of largest |cosine| with it, signed to agree: v_s·M."""
    cosine = v_s.transpose(-2, -1) @ v_t  # (B, n_s, n_t)
    largest = cosine.abs().amax(dim=1, keepdim=True)
    mask = torch.where(cosine.abs() == largest, torch.sign(cosine), torch.zeros_like(cosine))
    return v_s @ mask


def rbf(v: torch.Tensor, v_before: torch.Tensor) -> torch.Tensor:
    """(B, W_l, W_{l−1}, n): exp(−(v[a] − v_before[b])² / 8) for every pair of rows a, b, per vector."""
    return torch.exp(-(v.unsqueeze(2) - v_before.unsqueeze(1)).pow(2) / RBF_SCALE)


def kdsvd_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], k: int = 1) -> torch.Tensor:
    """Σ over consecutive stage pairs of Σ (R^s − R^t)² / B (B: the batch size), in fp32 with autocast off."""
    require_pairs("KDSVD", student_feats, teacher_feats)
    device = student_feats[0].device
    total = torch.zeros((), device=device)
    before: tuple[torch.Tensor, torch.Tensor] | None = None
    with torch.autocast(device.type, enabled=False):
        for f_s, f_t in zip(student_feats, teacher_feats):
            f_s, f_t = to_common_size(f_s, f_t)
            with torch.no_grad():
                v_t, s_t = right_singular_vectors(f_t, k)
                v_t = canonical_sign(v_t)
            v_s, _ = right_singular_vectors(f_s, k + EXTRA_STUDENT_VECTORS)
            v_s = align(v_s, v_t)
            scale = s_t.unsqueeze(1)
            v_t, v_s = v_t * scale, v_s * scale
            if before is not None:
                diff = (rbf(v_s, before[0]) - rbf(v_t, before[1])).pow(2)
                total = total + _finite(diff).sum() / f_s.shape[0]
            before = (v_s, v_t)
    return total


@register_method("kdsvd", KDSVDConfig, paper="Lee, Kim, Song, ECCV 2018", year=2018,
                 code="megvii-research/mdistiller: mdistiller/distillers/KDSVD.py")
class KDSVD(StagePairs):
    """Feature distillation on the relations between consecutive stages' leading singular vectors (`stages[1:]`)."""

    cfg: KDSVDConfig

    def stage_term(self, student_stages: list[torch.Tensor], teacher_stages: list[torch.Tensor]) -> torch.Tensor:
        return self.cfg.weight * kdsvd_loss(student_stages, teacher_stages, self.cfg.k)
