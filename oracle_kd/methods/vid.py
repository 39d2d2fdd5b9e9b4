"""Variational Information Distillation (Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019), following RepDistiller's
`VIDLoss` (distiller_zoo/VID.py) and mdistiller's `VID` (mdistiller/distillers/VID.py), both from the authors'
code (ssahn0215/variational-information-distillation).

VID maximises a variational lower bound on the mutual information between each teacher stage map t and the
student's map s at the same depth, with a Gaussian q(t | s) whose mean is a regressor of s and whose variance is
one learned value per teacher channel:

    μ = r(s),  r = 1×1 conv (C_s→C_t) → ReLU → 1×1 conv (C_t→C_t) → ReLU → 1×1 conv (C_t→C_t), no biases
              (the middle width is the teacher's, as both references build it)
    σ²_c = softplus(α_c) + eps,  α_c initialised so that σ²_c = init_var
    VID = Σ_stages mean_{b,c,h,w} ½·((μ − t)² / σ²_c + log σ²_c)          (the Gaussian NLL without ½·log 2π)

on the stage outputs `Features.stages[1:]` (post-ReLU in the CIFAR ResNets, the references' `feats[1:]`);
L = ce_weight·CE + weight·VID. Defaults: CE 1, weight 1, init_var 5, eps 1e-5 (both references).

The references disagree on σ². RepDistiller registers α as a parameter of the loss module and puts that module in
the optimizer, so the variances are learned (the paper's model: the variance is what lets the bound weigh each
channel by how predictable it is). mdistiller keeps α in a plain Python list: never in the optimizer, never in a
checkpoint, never moved to the GPU, so σ² stays at init_var throughout and VID reduces to a scaled MSE through the
regressor. Default here, `train_variance: true`: RepDistiller's and the paper's, α a learnable parameter that the
student's optimizer trains and the checkpoint saves. `train_variance: false` is mdistiller's: α a (non-saved)
buffer that follows the model's device and dtype but is never trained.

Sizes: both references average-pool the larger map to the smaller one's size before the regressor (the student's
map when it is larger, else the teacher's); so does this. The regressors' widths come from a shape probe, and the
stage outputs are paired one to one: a pair with different stage counts is refused when the method is built.
The NLL is computed in fp32 (fp64 in an fp64 run); the regressor runs like the student (under autocast if any).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.batch import DataInfo
from oracle_kd.core.losses import to_common_size
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.errors import require
from oracle_kd.methods.base import MethodConfig, StagePairs
from oracle_kd.methods.registry import register_method


@dataclass
class VIDConfig(MethodConfig):
    """L = ce_weight·CE + weight·Σ_stages NLL of the teacher map under N(r(s), softplus(α)+eps); RepDistiller's
    learned variances by default (`train_variance=false`: mdistiller's fixed ones)."""

    name: str = "vid"
    weight: float = 1.0
    init_var: float = 5.0
    eps: float = 1e-5
    train_variance: bool = True

    def validate(self) -> None:
        super().validate()
        require(self.weight >= 0, "method.weight", self.weight, "must be >= 0")
        require(self.eps > 0, "method.eps", self.eps, "must be > 0")
        require(self.init_var > self.eps, "method.init_var", self.init_var, f"must be > method.eps ({self.eps})")


def inverse_softplus(y: float) -> float:
    """α with softplus(α) = log(1 + e^α) = y (y > 0)."""
    return y + math.log(-math.expm1(-y))


def gaussian_nll(mean: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """mean over all entries of ½·((mean − target)²/σ² + log σ²), σ² (C,) one per channel of (B, C, H, W) maps."""
    var = at_least_fp32(variance).view(1, -1, 1, 1)
    return (0.5 * ((at_least_fp32(mean) - at_least_fp32(target)).pow(2) / var + torch.log(var))).mean()


def vid_regressor(s_channels: int, t_channels: int) -> nn.Sequential:
    """Three bias-free 1×1 convs with ReLUs between, from the student's width to the teacher's."""
    return nn.Sequential(nn.Conv2d(s_channels, t_channels, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(t_channels, t_channels, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(t_channels, t_channels, 1, bias=False))


def vid_loss(regressors: Sequence[nn.Module], variances: Sequence[torch.Tensor],
             student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ over stages of the NLL of the teacher's map under N(regressor(student's map), σ²) after pooling the
    larger map of each pair to the smaller one's size."""
    if not len(student_feats) == len(teacher_feats) == len(regressors) == len(variances) or not student_feats:
        raise ValueError(f"VID needs one regressor and variance per stage pair, got {len(regressors)} and "
                         f"{len(variances)} for {len(student_feats)} student and {len(teacher_feats)} teacher maps")
    total = torch.zeros((), device=student_feats[0].device)
    for regressor, var, f_s, f_t in zip(regressors, variances, student_feats, teacher_feats):
        f_s, f_t = to_common_size(f_s, f_t)
        total = total + gaussian_nll(regressor(f_s), f_t, var)
    return total


@register_method("vid", VIDConfig, paper="Ahn, Hu, Damianou, Lawrence, Dai, CVPR 2019", year=2019,
                 code="HobbitLong/RepDistiller: distiller_zoo/VID.py")
class VID(StagePairs):
    """Per stage, a regressor and per-channel variances that train with the student (the variances only with
    `train_variance`); both are extras of the method, saved with the student."""

    cfg: VIDConfig

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: VIDConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        if self.stage_shapes is None:
            raise ValueError("vid sizes its regressors from a shape probe: pass input_shape and a teacher")
        s_shapes, t_shapes = self.stage_shapes
        p = next(student.parameters())  # the extras on the student's device, in its dtype (fp64 in an fp64 run)
        self.regressors = nn.ModuleList(vid_regressor(s[0], t[0]) for s, t in zip(s_shapes, t_shapes))
        self.regressors.to(device=p.device, dtype=p.dtype)
        alpha = inverse_softplus(cfg.init_var - cfg.eps)
        self.log_scales = nn.ParameterList() if cfg.train_variance else None
        for i, t in enumerate(t_shapes):
            init = torch.full((t[0],), alpha, device=p.device, dtype=p.dtype)
            if self.log_scales is not None:
                self.log_scales.append(nn.Parameter(init))
            else:
                self.register_buffer(f"fixed_log_scale_{i}", init, persistent=False)

    def variances(self) -> list[torch.Tensor]:
        """σ² per stage: softplus(α) + eps, one value per teacher channel."""
        alphas = (list(self.log_scales) if self.log_scales is not None
                  else [getattr(self, f"fixed_log_scale_{i}") for i in range(len(self.regressors))])
        return [F.softplus(at_least_fp32(a)) + self.cfg.eps for a in alphas]

    def stage_term(self, student_stages: list[torch.Tensor], teacher_stages: list[torch.Tensor]) -> torch.Tensor:
        return self.cfg.weight * vid_loss(self.regressors, self.variances(), student_stages, teacher_stages)
