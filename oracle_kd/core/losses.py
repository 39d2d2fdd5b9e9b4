"""Loss functions shared by several methods (each written once, tested against hand computations)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from oracle_kd.core.precision import at_least_fp32


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float | torch.Tensor) -> torch.Tensor:
    """Hinton's distillation term τ²·KL(softmax(t/τ) ‖ softmax(s/τ)).

    KL summed over classes and averaged over the batch (as the released code and mdistiller); τ² keeps the gradient scale
    independent of τ. Computed in fp32 because log-probabilities lose too much in bf16. τ may be a 0-dim tensor that
    needs a gradient (CTKD's learnt temperature): it then gets one through both softmaxes and τ².
    """
    t = temperature if isinstance(temperature, torch.Tensor) else float(temperature)
    log_p_s = F.log_softmax(at_least_fp32(student_logits) / t, dim=1)
    log_p_t = F.log_softmax(at_least_fp32(teacher_logits) / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
    return kl * (t * t)


# The reference's guard in the z-score's denominator: it is added to the standard deviation, not to the variance.
STANDARDIZE_EPS = 1e-7


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each row's z-score (z − mean) / (1e-7 + std), with the
    unbiased (N − 1) standard deviation over the classes, as the reference's `torch.std`. The result is the same
    for a·z + b (a > 0) up to the 1e-7, which is what frees a student from matching the teacher's logit range and
    offset; a KD term then divides it by its (base) temperature. In fp32 at least."""
    z = at_least_fp32(logits)
    return (z - z.mean(dim=-1, keepdim=True)) / (STANDARDIZE_EPS + z.std(dim=-1, keepdim=True))


def pool_to(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive-average-pool a (B, C, H, W) map to `size` (no-op when it already has that size)."""
    return f if tuple(f.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(f, size)


def require_pairs(method: str, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> None:
    """A loss over paired maps needs as many student maps as teacher maps, and at least one (ValueError)."""
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"{method} needs the same, non-zero number of student and teacher maps, "
                         f"got {len(student_feats)} and {len(teacher_feats)}")


def to_common_size(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps at the smaller one's (H, W): the larger is average-pooled (mdistiller's rule for AT, NST and VID)."""
    size = (min(f_s.shape[-2], f_t.shape[-2]), min(f_s.shape[-1], f_t.shape[-1]))
    return pool_to(f_s, size), pool_to(f_t, size)


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a (B, C, H, W) map: normalize(mean_c |f|^p) flattened over H·W → (B, H·W).

    Zagoruyko & Komodakis' AT map (p = 2); SAD uses the same map as its values. fp32 for the norm.
    """
    a = at_least_fp32(f).abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(a, dim=1)
