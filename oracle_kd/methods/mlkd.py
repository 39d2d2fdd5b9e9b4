"""MLKD, Multi-level Logit Distillation (Jin, Wang, Lin, CVPR 2023), as its official code (an mdistiller fork,
`KD_ours`) trains it: two views of every image, KD at five temperatures, and class- and batch-correlation terms.

Each step sees the weak view x (today's batch: crop and flip) and a strong view x̃ (its own crop and flip, then
RandAugment and Cutout: `data/strong.py`). With p = softmax(z/T), for T in {τ, 3, 5, 2, 6} (τ = 4):

    KD_T(s, t)  = T²·Σ_c p_t log(p_t/p_s), averaged over the batch
    CC_T(s, t)  = ‖p_tᵀp_t − p_sᵀp_s‖²_F / C        (class correlation, C×C)
    BC_T(s, t)  = ‖p_t p_tᵀ − p_s p_sᵀ‖²_F / B       (batch correlation, B×B)

    L = ce_weight·(CE(s, y) + CE(s̃, y))
      + w·[f_b·Σ_T KD_T(s, t) + KD_τ(s̃, t̃) + KD_3(s̃, t̃) + KD_5(s̃, t̃) + KD_2(s, t) + KD_6(s, t)]
      + w·f_c·Σ_T CC_T(s, t) + w·f_b·Σ_T BC_T(s, t)

s, t are the student's and the teacher's logits on x; s̃, t̃ on x̃; w = kd_weight. The quirks are the official
code's and are kept, because its published numbers come from them: the "confidence masks" (samples whose teacher
confidence, and classes whose summed teacher probability, are at or below the median) multiply a loss that is
already a scalar, so they only scale it by f_b and f_c, the masked fractions (about one half); the T = 2 and
T = 6 terms of the strong-view sum read the weak logits; the strong view's correlation terms are not part of
the loss. The paper states per-sample masking and strong-view terms throughout. The teacher's strong-view pass
is this method's own (eval mode, no gradient); its weak-view pass is the shared one.

`logit_stand=true` (LSKD, Sun et al., CVPR 2024; sunshangquan/logit-standardization-KD `mdistiller/distillers/MLKD.py`)
z-scores each sample's logits (`core.losses.standardize`) in the KD_T terms only, as that code does: the CC and BC
terms and the masks read the raw logits. The reference's flag also sets its KD weight and τ (`--kd-weight`,
`--base-temp`); here they are `kd_weight` and `temperature`, given per pair by the preset method=mlkd_ls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from oracle_kd.core.batch import Batch
from oracle_kd.core.losses import kd_loss
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import WHEN_SET, Distiller, MethodConfig
from oracle_kd.methods.kd import standardized
from oracle_kd.methods.registry import register_method

EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)  # after method.temperature, in the official code's order
STRONG = "strong"


@dataclass
class MLKDConfig(MethodConfig):
    """The official code's defaults (mdistiller's KD section): CE 0.1, KD weight 0.9, τ = 4."""

    name: str = "mlkd"
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    temperature: float = 4.0
    # LSKD's z-score in the KD terms; added after MLKD runs were stored: part of a run's identity only when on
    logit_stand: bool = dataclasses.field(default=False, metadata={"identity": WHEN_SET})
    # "teacher-student" -> kd_weight (method=mlkd_ls); resolved by for_pair, so not part of a run's identity
    kd_weight_by_pair: Optional[dict[str, float]] = dataclasses.field(default_factory=dict,
                                                                     metadata={"identity": False})

    def validate(self) -> None:
        super().validate()
        require(self.kd_weight >= 0, "method.kd_weight", self.kd_weight, "must be >= 0")
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")
        for pair, weight in (self.kd_weight_by_pair or {}).items():
            require(weight >= 0, f"method.kd_weight_by_pair.{pair}", weight, "must be >= 0")


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.softmax(at_least_fp32(logits) / temperature, dim=1)


def class_correlation(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """CC_T: ‖p_tᵀp_t − p_sᵀp_s‖²_F / C."""
    p_s, p_t = _probs(s, temperature), _probs(t, temperature)
    return ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum() / s.shape[1]


def batch_correlation(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """BC_T: ‖p_t p_tᵀ − p_s p_sᵀ‖²_F / B."""
    p_s, p_t = _probs(s, temperature), _probs(t, temperature)
    return ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / s.shape[0]


def masked_fractions(t_weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_b, f_c): the fraction of samples whose teacher confidence max_c p_t is at or below its median, and of
    classes whose summed teacher probability Σ_b p_t is at or below its median (linear-interpolated medians,
    as numpy's percentile)."""
    p = F.softmax(at_least_fp32(t_weak), dim=1)
    confidence, per_class = p.max(dim=1).values, p.sum(dim=0)
    f_b = (confidence <= torch.quantile(confidence, 0.5)).to(p.dtype).mean()
    f_c = (per_class <= torch.quantile(per_class, 0.5)).to(p.dtype).mean()
    return f_b, f_c


def mlkd_terms(s: torch.Tensor, t: torch.Tensor, s_strong: torch.Tensor, t_strong: torch.Tensor,
               temperature: float, logit_stand: bool = False) -> dict[str, torch.Tensor]:
    """The unweighted KD, CC and BC terms of the module docstring (before × kd_weight); `logit_stand`: the KD
    terms on per-sample z-scores."""
    temps = (temperature, *EXTRA_TEMPERATURES)
    f_b, f_c = masked_fractions(t)
    ks, kt = standardized(s, t, logit_stand)
    ks_strong, kt_strong = standardized(s_strong, t_strong, logit_stand)
    kd_weak = f_b * sum(kd_loss(ks, kt, T) for T in temps)
    kd_strong = (sum(kd_loss(ks_strong, kt_strong, T) for T in temps[:3])
                 + sum(kd_loss(ks, kt, T) for T in temps[3:]))
    return {"kd": kd_weak + kd_strong, "cc": f_c * sum(class_correlation(s, t, T) for T in temps),
            "bc": f_b * sum(batch_correlation(s, t, T) for T in temps)}


@register_method("mlkd", MLKDConfig, paper="Jin, Wang, Lin, CVPR 2023", year=2023,
                 code="Jin-Ying/Multi-Level-Logit-Distillation: mdistiller/distillers/KD_ours.py")
class MLKD(Distiller):
    """Multi-level logit distillation over a weak and a strong view; see the module docstring."""

    cfg: MLKDConfig
    views = (STRONG,)
    reads_logit_stand: ClassVar[bool] = True

    def forward_train(self, batch: Batch, epoch: int,
                      teacher_out: TeacherOut | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if STRONG not in batch.views:
            raise ValueError("mlkd reads the strong view of each batch: the batch has none")
        x_strong = batch.views[STRONG]
        t_logits, _ = self.teacher_out(batch, teacher_out)
        with torch.no_grad():
            t_strong, _ = self.teacher(x_strong)
        s_logits, _ = self.student(batch.x)
        s_strong, _ = self.student(x_strong)
        terms = mlkd_terms(s_logits, t_logits, s_strong, t_strong, self.cfg.temperature, self.cfg.logit_stand)
        ce = self.ce_loss(s_logits, batch.y) + self.ce_loss(s_strong, batch.y)
        return s_logits, {"ce": ce, **{k: self.cfg.kd_weight * v for k, v in terms.items()}}
