"""FitNet hints (Romero et al. 2015): regress a student stage onto the teacher's, as RepDistiller/mdistiller do."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import require
from oracle_kd.methods.base import MethodConfig, TermsDistiller, probe_features
from oracle_kd.methods.registry import register_method


@dataclass
class FitNetConfig(MethodConfig):
    """L = ce_weight·CE + weight·MSE(regressor(s_stage), t_stage), on `Features.stages[hint_stage]`.

    Defaults follow mdistiller's CIFAR FitNet: the output of layer2 (stage 2), weight 100.
    """

    name: str = "fitnet"
    weight: float = 100.0
    hint_stage: int = 2

    def validate(self) -> None:
        super().validate()
        require(self.weight >= 0, "method.weight", self.weight, "must be >= 0")
        require(self.hint_stage >= 0, "method.hint_stage", self.hint_stage, "must be >= 0")


def hint_regressor(s_shape: tuple[int, int, int], t_shape: tuple[int, int, int],
                   same_kernel: int = 1) -> nn.Sequential:
    """conv → BN → ReLU from a (C, H, W) student map to the teacher's (C, H, W).

    The conv's geometry is the only thing that depends on the sizes: a stride-2 3×3 conv halves, a stride-2
    4×4 transposed conv doubles, equal sizes take a 'same' conv of `same_kernel` (1×1 as mdistiller; the KED
    code's 3×3), and a valid conv of kernel 1 + s − t trims any other larger map. A student map smaller than
    the teacher's but not half of it has no regressor: ConfigError.
    """
    (s_c, s_h, s_w), (t_c, t_h, t_w) = s_shape, t_shape
    conv: nn.Module
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif (2 * s_h, 2 * s_w) == (t_h, t_w):
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    elif (s_h, s_w) == (t_h, t_w):
        conv = nn.Conv2d(s_c, t_c, kernel_size=same_kernel, padding=same_kernel // 2)
    else:
        require(s_h >= t_h and s_w >= t_w, "method.hint_stage", f"{s_h}x{s_w}->{t_h}x{t_w}",
                 "needs a student map at least as large as the teacher's, or half of it")
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), nn.ReLU())


@register_method("fitnet", FitNetConfig, paper="Romero et al., ICLR 2015", year=2015,
                 code="megvii-research/mdistiller: mdistiller/distillers/FitNet.py")
class FitNet(TermsDistiller):
    """Hint loss on one stage; the regressor is a submodule, so it trains with the student's optimizer and
    stays out of the saved student."""

    cfg: FitNetConfig

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: FitNetConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        input_shape = self.input_shape
        if input_shape is None:
            raise ValueError("fitnet sizes its regressor from a shape probe: pass input_shape")
        # eval-mode probes: a train-mode forward would move the teacher's BN running statistics
        _, t_feats = probe_features(self.teacher, input_shape)
        _, s_feats = probe_features(self.student, input_shape)
        n = min(len(t_feats.stages), len(s_feats.stages))
        require(cfg.hint_stage < n, "method.hint_stage", cfg.hint_stage, f"must be < {n} (the models' stage count)")
        s_shape = tuple(s_feats.stages[cfg.hint_stage].shape[1:])
        t_shape = tuple(t_feats.stages[cfg.hint_stage].shape[1:])
        self.regressor = hint_regressor(s_shape, t_shape).to(next(student.parameters()).device)

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        stage = self.cfg.hint_stage
        hint = self.regressor(student[1].stages[stage])
        return {"hint": self.cfg.weight * F.mse_loss(at_least_fp32(hint), at_least_fp32(teacher[1].stages[stage]))}
