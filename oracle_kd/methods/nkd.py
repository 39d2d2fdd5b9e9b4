"""NKD: Normalized Knowledge Distillation (Yang, Zeng, Yuan, Li; "From Knowledge Distillation to Self-Knowledge
Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels", ICCV 2023), following the
official yzd-v/cls_KD `mmcls/models/dis_losses/nkd.py` (`NKDLoss`) and its configs `configs/distillers/`.

KD's KL mixes the target class with the others, and the non-target part is scaled by the teacher's (1 − p_target),
so it fades as the teacher grows confident. NKD splits the two and normalises the non-target part: with p = softmax(z)
and, over the non-target classes only (each side renormalised there), p̂ = softmax(z_non-target / T),

    target     = −mean_i p_t,i[y_i]·log p_s,i[y_i]             (T = 1: the label, softened by the teacher)
    non_target = −T²·mean_i Σ_{c ≠ y_i} p̂_t,i,c·log p̂_s,i,c    (a soft cross-entropy, not a KL)
    L          = ce_weight·CE + target + gamma·non_target

Both are cross-entropies, so the loss at student == teacher is the teachers' entropy terms, not 0; over the
student's non-target logits the minimum is there (Gibbs' inequality), at T²·H(p̂_t).

Reference followed: cls_KD's `NKDLoss`, the authors' own code for the paper. The mdistiller-format copy in
shicaiwei123/SDD-CVPR2024 (`mdistiller/distillers/nkd.py`) is not the default: its mask scatters 1 instead of 0, so its
"non-target" set still holds the target class, and it adds a DKD-style warm-up of the loss that NKD does not have.
Its NKD rows (as a baseline of SDD) were made with it, so it is an option: `keep_target=true` (the second term over
every class) and `warmup=20` (both terms times min(epoch/20, 1), 1-based epochs); `method=nkd_sdd` sets them with
the copy's fixed T 1 and γ 1.5.
Kept from the reference: the target term at T = 1 whatever `temperature` is, the soft cross-entropy (no teacher
entropy subtracted), T² on the non-target term only, CE at weight 1 beside it. Changed, same numbers: every
log-probability comes from one log_softmax (taking log of a softmax gives −inf, then NaN, once a probability
underflows, as users of cls_KD report), and the non-target classes are gathered rather than selected by a boolean
mask (which makes the GPU wait for the host).

Defaults: the CIFAR-100 config `configs/distillers/cifar100/res34_distill_res18_cifar.py` (T 3, γ 3.5; written for
mmcls's ResNet-34 → ResNet-18, not the RepDistiller pairs). ImageNet configs (`res34_distill_res18_img.py`,
`res50_distill_mv1_img.py`): T 1, γ 1.5.
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
from oracle_kd.methods.dkd import _non_target
from oracle_kd.methods.registry import register_method


@dataclass
class NKDConfig(MethodConfig):
    """L = ce_weight·CE − mean p_t[y]·log p_s[y] − gamma·T²·mean Σ_{c≠y} p̂_t,c·log p̂_s,c; cls_KD's CIFAR-100 config
    (T 3, γ 3.5; ImageNet: T 1, γ 1.5)."""

    name: str = "nkd"
    gamma: float = 3.5
    temperature: float = 3.0
    keep_target: bool = False  # True: SDD's copy, whose "non-target" term runs over every class
    warmup: int = 0  # SDD's copy: 20 (both NKD terms ramp over the first epochs); 0 = none, as cls_KD

    def validate(self) -> None:
        super().validate()
        require(self.gamma >= 0, "method.gamma", self.gamma, "must be >= 0")
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")
        require(self.warmup >= 0, "method.warmup", self.warmup, "must be >= 0 (0 = no warm-up)")


def nkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float, keep_target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (target, non_target): −mean p_t[y]·log p_s[y] at T = 1 and T²·the soft cross-entropy of the
    renormalised non-target distributions at T, in fp32 at least. Needs at least 2 classes. `keep_target`: the
    second term over every class, as SDD's copy computes it."""
    s, t, tau = at_least_fp32(student_logits), at_least_fp32(teacher_logits), float(temperature)
    y = target.view(-1, 1)
    log_p_s_y = F.log_softmax(s, dim=1).gather(1, y)
    p_t_y = torch.softmax(t, dim=1).gather(1, y)
    target_term = -(p_t_y * log_p_s_y).mean()
    rest_s, rest_t = (s, t) if keep_target else (_non_target(s, target), _non_target(t, target))
    log_q_s = F.log_softmax(rest_s / tau, dim=1)
    q_t = torch.softmax(rest_t / tau, dim=1)
    non_target = -(q_t * log_q_s).sum(dim=1).mean() * (tau * tau)
    return target_term, non_target


@register_method("nkd", NKDConfig, paper="Yang, Zeng, Yuan, Li, ICCV 2023", year=2023,
                 code="yzd-v/cls_KD: mmcls/models/dis_losses/nkd.py")
class NKD(TermsDistiller):
    """Logit distillation with the target class and the renormalised non-target classes matched apart."""

    cfg: NKDConfig

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        target_term, non_target = nkd_terms(student[0], teacher[0], batch.y, self.cfg.temperature,
                                            self.cfg.keep_target)
        w = 1.0 if self.cfg.warmup == 0 else min(epoch / self.cfg.warmup, 1.0)
        return {"target": w * target_term, "non_target": w * self.cfg.gamma * non_target}
