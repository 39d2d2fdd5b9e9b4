"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), following mdistiller's `DKD`.

KD's KL splits into TCKD, a KL between the binary [target, not target] distributions, and NCKD, a KL
between the distributions over the non-target classes only. DKD weights them by α and β and ramps
both up linearly over the first `warmup` epochs.

Both terms are Hinton's τ²·KL on a different set of logits, so both reuse `kd_loss`:
- NCKD: the (B, C−1) non-target logits. The reference subtracts 1000 from the target logit/τ instead,
  which is the same number in fp32 unless the target leads the others by more than ~900·τ.
- TCKD: the two logits (z_target, τ·logsumexp(z_non-target/τ)), whose softmax at τ is exactly
  [p_target, Σ p_non-target]. The reference takes torch.log of these probabilities, which is −inf
  (then NaN loss and gradients) once a prediction is confident enough that one of them underflows.

`logit_stand=true` (LSKD, Sun et al., CVPR 2024; sunshangquan/logit-standardization-KD `mdistiller/distillers/DKD.py`)
computes both terms on the per-sample z-scores of s and t (`core.losses.standardize`), τ being the base temperature.
The reference's flag also multiplies α and β by its `--kd-weight` and sets τ to `--base-temp`; here the preset
method=dkd_ls gives the resulting α, β and τ per pair as plain numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from oracle_kd.core.batch import Batch
from oracle_kd.core.losses import kd_loss
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import TermsDistiller
from oracle_kd.methods.kd import KDConfig, standardized
from oracle_kd.methods.registry import register_method


@dataclass
class DKDConfig(KDConfig):
    """L = ce_weight·CE + min(epoch/warmup, 1)·(alpha·TCKD + beta·NCKD); mdistiller's CIFAR-100 defaults.

    warmup = 0 means no warm-up (factor 1 from the first epoch).
    """

    name: str = "dkd"
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup: int = 20
    # "teacher-student" -> beta (mdistiller's per-pair configs); resolved by for_pair (as KDConfig's alpha_by_pair and
    # temperature_by_pair), so not part of a run's identity
    beta_by_pair: Optional[dict[str, float]] = dataclasses.field(default_factory=dict, metadata={"identity": False})

    def validate(self) -> None:
        super().validate()
        require(self.beta >= 0, "method.beta", self.beta, "must be >= 0")
        require(self.warmup >= 0, "method.warmup", self.warmup, "must be >= 0 (0 = no warm-up)")
        for pair, beta in (self.beta_by_pair or {}).items():
            require(beta >= 0, f"method.beta_by_pair.{pair}", beta, "must be >= 0")


def _non_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The (B, C−1) logits of the classes other than each row's target, in class order.

    A gather (column j, or j+1 from the target on) rather than boolean indexing, which would make the
    GPU wait for the host every step.
    """
    b, c = logits.shape
    j = torch.arange(c - 1, device=logits.device).expand(b, -1)
    return logits.gather(1, j + (j >= target.view(-1, 1)).long())


def _binary_logits(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, 2) logits whose softmax at `temperature` is [p_target, Σ p_non-target], in log space."""
    z_target = logits.gather(1, target.view(-1, 1))
    z_rest = temperature * torch.logsumexp(_non_target(logits, target) / temperature, dim=1, keepdim=True)
    return torch.cat([z_target, z_rest], dim=1)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (TCKD, NCKD), each τ²·KL summed over classes and divided by the batch size, in fp32."""
    s, t, tau = at_least_fp32(student_logits), at_least_fp32(teacher_logits), float(temperature)
    tckd = kd_loss(_binary_logits(s, target, tau), _binary_logits(t, target, tau), tau)
    nckd = kd_loss(_non_target(s, target), _non_target(t, target), tau)
    return tckd, nckd


@register_method("dkd", DKDConfig, paper="Zhao, Cui, Song, Qiu, Liang, CVPR 2022", year=2022,
                 code="megvii-research/mdistiller: mdistiller/distillers/DKD.py")
class DKD(TermsDistiller):
    """Logit distillation with target and non-target parts weighted separately."""

    cfg: DKDConfig
    reads_logit_stand: ClassVar[bool] = True

    def warmup_factor(self, epoch: int) -> float:
        """min(epoch / warmup, 1) with 1-based epochs: the reference's linear ramp of the KD terms."""
        return 1.0 if self.cfg.warmup == 0 else min(epoch / self.cfg.warmup, 1.0)

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        tckd, nckd = dkd_terms(*standardized(student[0], teacher[0], self.cfg.logit_stand), batch.y,
                               self.cfg.temperature)
        w = self.warmup_factor(epoch)
        return {"tckd": w * self.cfg.alpha * tckd, "nckd": w * self.cfg.beta * nckd}
