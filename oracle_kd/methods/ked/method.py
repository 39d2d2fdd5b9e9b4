"""KED, Knowledge Explaining Distillation (Chowdhury, Liang, Tizghadam, Albanese 2023), as its released code
trains it.

Teacher and student are superfeature-explaining networks (`sfx*` models): M branches, each with its own
class distribution, combined into the prediction. The student learns the label, the teacher's combined
prediction, and the teacher's explanation, branch i from branch i:

    L = ce_weight·CE(z_s, y) + λ(1−μ)·T²·KL_T(z_t ‖ z_s) + Σ_i λμ/M·τ²·KL_τ(z_t^i ‖ z_s^i)

`feature` adds a hidden-representation term on each branch's last map (FitNet, AT or SP), taking the share ρ
of the explanation part: the branch KL weight becomes λμ(1−ρ)/M and ℓ_X gets λμρ/M. `baseline=true` is the
paper's KD+X on plain models: ce_weight·CE + λ(1−ρ)·T²·KL_T(z_t ‖ z_s) + λρ·ℓ_X on the last stage's maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.features import Features
from oracle_kd.core.losses import kd_loss
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import ConfigError, choice, require
from oracle_kd.methods.at import at_loss
from oracle_kd.methods.base import Distiller, MethodConfig, probe_features
from oracle_kd.methods.fitnet import hint_regressor
from oracle_kd.methods.registry import register_method
from oracle_kd.methods.sp import sp_loss

FEATURES = ("none", "fitnet", "at", "sp")


@dataclass
class KEDConfig(MethodConfig):
    """Defaults are the released code's: CE 0.3 (= 1 − λ), λ = μ = 0.7, T = τ = 10, ρ = 0.7, ℓ_AT ×1000,
    ℓ_SP ×3000; the FitNet regressor is a 3×3 'same' conv + BN + ReLU per branch."""

    name: str = "ked"
    ce_weight: float = 0.3
    lam: float = 0.7
    mu: float = 0.7
    temperature: float = 10.0
    tau: float = 10.0
    feature: str = "none"
    rho: float = 0.7
    at_scale: float = 1000.0
    sp_scale: float = 3000.0
    baseline: bool = False

    def validate(self) -> None:
        super().validate()
        for key in ("lam", "mu", "rho"):
            value = getattr(self, key)
            require(0 <= value <= 1, f"method.{key}", value, "must be in [0, 1]")
        for key in ("temperature", "tau"):
            require(getattr(self, key) > 0, f"method.{key}", getattr(self, key), "must be > 0")
        for key in ("at_scale", "sp_scale"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "must be >= 0")
        choice("method.feature", self.feature, FEATURES)

    def weights(self, groups: int) -> dict[str, float]:
        """The weight of each term: `kd` on the combined logits (T²·KL), `explain` per branch (τ²·KL), `feature`
        per map pair (ℓ_X), for a student of `groups` branches (the baseline has one map pair, no branches)."""
        rho = self.rho if self.feature != "none" else 0.0
        if self.baseline:
            return {"kd": self.lam * (1 - rho), "explain": 0.0, "feature": self.lam * rho}
        return {"kd": self.lam * (1 - self.mu), "explain": self.lam * self.mu * (1 - rho) / groups,
                "feature": self.lam * self.mu * rho / groups}


def _maps(feats: Features, baseline: bool) -> list[torch.Tensor]:
    """The maps ℓ_X pairs: each branch's last map, or the plain model's last stage (baseline)."""
    return feats.stages[-1:] if baseline else feats.branch_maps


@register_method("ked", KEDConfig, paper="Chowdhury, Liang, Tizghadam, Albanese, 2023", year=2023, code="scbwn/ked")
class KED(Distiller):
    """KED (and KED+FitNet/AT/SP, and the KD+X baselines): see the module docstring."""

    cfg: KEDConfig

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: KEDConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        input_shape = self.input_shape
        self.groups = 1
        self.regressors = nn.ModuleList()
        if input_shape is None or teacher is None:
            return
        with torch.random.fork_rng(devices=[]):  # the probes must not move the run's RNG stream
            _, t_feats = probe_features(self.teacher, input_shape)
            _, s_feats = probe_features(self.student, input_shape)
        if not cfg.baseline:
            m_t, m_s = len(t_feats.branch_logits), len(s_feats.branch_logits)
            if not m_s or not m_t:
                raise ConfigError("method=ked needs superfeature-explaining teacher and student (sfx* models, e.g. "
                                  "teacher=sfx4_resnet56x2 student=sfx4_resnet20); method.baseline=true is KD+X "
                                  "on plain models")
            require(m_t == m_s, "method", "ked", f"pairs branches one to one, but the teacher has {m_t} and the "
                    f"student {m_s}")
            self.groups = m_s
        if cfg.feature == "fitnet":
            pairs = zip(_maps(s_feats, cfg.baseline), _maps(t_feats, cfg.baseline))
            self.regressors = nn.ModuleList(hint_regressor(tuple(s.shape[1:]), tuple(t.shape[1:]), same_kernel=3)
                                            for s, t in pairs).to(next(student.parameters()).device)

    def feature_loss(self, s_maps: Sequence[torch.Tensor], t_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Σ over map pairs of ℓ_X: FitNet's MSE after the regressor, or the scaled AT / SP losses."""
        cfg = self.cfg
        if cfg.feature == "at":
            return cfg.at_scale * at_loss(s_maps, t_maps)
        if cfg.feature == "sp":
            return cfg.sp_scale * sp_loss(s_maps, t_maps)
        return sum((F.mse_loss(at_least_fp32(reg(s)), at_least_fp32(t))
                    for reg, s, t in zip(self.regressors, s_maps, t_maps)), torch.zeros((), device=s_maps[0].device))

    def forward_train(self, batch: Batch, epoch: int,
                      teacher_out: TeacherOut | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        cfg = self.cfg
        t_logits, t_feats = self.teacher_out(batch, teacher_out)
        s_logits, s_feats = self.student(x)
        w = cfg.weights(self.groups)
        losses = {"ce": self.ce_loss(s_logits, y), "kd": w["kd"] * kd_loss(s_logits, t_logits, cfg.temperature)}
        if not cfg.baseline:
            explain = sum((kd_loss(s, t, cfg.tau) for s, t in zip(s_feats.branch_logits, t_feats.branch_logits)),
                          torch.zeros((), device=s_logits.device))
            losses["explain"] = w["explain"] * explain
        if cfg.feature != "none":
            losses[cfg.feature] = w["feature"] * self.feature_loss(_maps(s_feats, cfg.baseline),
                                                                   _maps(t_feats, cfg.baseline))
        return s_logits, losses
