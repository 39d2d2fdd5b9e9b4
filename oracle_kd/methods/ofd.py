"""OFD, "A Comprehensive Overhaul of Feature Distillation" (Heo et al., ICCV 2019), as mdistiller trains it.

The student's pre-ReLU stage maps (`Features.preact`, stem excluded) go through a connector (1×1 conv + BN, to the
teacher's width) and are pulled towards the teacher's pre-ReLU maps, average-pooled to the student's size, by the
partial L2 distance: with s the connector's output, t the teacher's value and m the channel's margin,

    d(s, t) = (s − m)²  where s > m ≥ t          (the teacher is "off": pull only what the ReLU would let through)
            = (s − t)²  where s > t > m, t ≤ 0   (an off teacher above its margin: push down to it)
            = (s − t)²  where t > 0              (the teacher is "on": match it)
            = 0         elsewhere

    L = ce_weight·CE + weight · Σ_i Σ_{c,h,w} mean_b d_i / 2^(n−1−i)      (i = 0 … n−1, deeper stages weigh more)

The margin of a channel is E[x | x < 0] for x ~ N(β, γ²), its BN's shift and scale in the teacher (the BN
before the stage's last ReLU, `bn_before_relu()`): β − |γ|·φ(β/|γ|)/Φ(−β/|γ|), or −3|γ| where Φ(−β/|γ|) ≤ 0.001.

The teacher runs with batch statistics, as the reference leaves it in train mode (its `train()` override; the
authors confirm it is intended): its BNs normalise by the batch, not by their running averages. So its features
are not the eval-mode pass the engine shares between a cohort's runs: `teacher_input()` is None and the method
runs its own teacher pass (a copy that shares the teacher's weights, with BNs that keep no running statistics,
so the shared teacher's are never moved). An OFD run still trains in any cohort; it just saves no teacher pass.

Where this differs from the reference, on purpose: connector widths come from a shape probe (the reference reads
`get_stage_channels()`, missing on ShuffleNetV1); when the teacher has more stages than the student, the
margins are aligned with the teacher's last stages like the features (the reference pairs the first ones, which
have the wrong width). Families without pre-ReLU maps (MobileNetV2's linear bottlenecks, MLPs) are refused as
either side; ShuffleNets, whose pre-ReLU maps follow no single BN, are refused as teachers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherInput, TeacherOut
from oracle_kd.errors import ConfigError, require
from oracle_kd.methods.base import Distiller, MethodConfig, probe_features
from oracle_kd.methods.registry import register_method

CDF_FLOOR = 0.001  # below this share of negative values the margin is −3|γ| (the reference's cut-off)


@dataclass
class OFDConfig(MethodConfig):
    """mdistiller's CIFAR defaults: CE 1, feature weight 1e-3 (its ImageNet config uses 1e-4), 1×1 connectors. The
    distance is summed over positions (it goes as P): the weight is rescaled on inputs under 32 px."""

    SIZE_SCALED = {"weight": -1}

    name: str = "ofd"
    weight: float = 1e-3
    kernel_size: int = 1

    def validate(self) -> None:
        super().validate()
        require(self.weight >= 0, "method.weight", self.weight, "must be >= 0")
        require(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "method.kernel_size", self.kernel_size,
                "must be an odd number >= 1 (a 'same' convolution)")


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def channel_margin(scale: float, shift: float) -> float:
    """E[x | x < 0] for x ~ N(shift, scale²), or −3|scale| when fewer than 0.1 % of x are negative."""
    s = abs(scale)
    if s == 0.0:  # a constant channel: its value if negative, else nothing below zero to expect
        return min(shift, 0.0)
    below = normal_cdf(-shift / s)
    if below <= CDF_FLOOR:
        return -3.0 * s
    return shift - s * math.exp(-((shift / s) ** 2) / 2) / math.sqrt(2 * math.pi) / below


def bn_margins(bn: nn.BatchNorm2d) -> torch.Tensor:
    """(1, C, 1, 1) margins of one BN's channels, from its affine weight (scale) and bias (shift), in float32 as
    the reference keeps them."""
    margins = [channel_margin(s, m) for s, m in zip(bn.weight.detach().tolist(), bn.bias.detach().tolist())]
    return torch.tensor(margins, dtype=torch.float32, device=bn.weight.device).view(1, -1, 1, 1)


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Σ_{c,h,w} mean_b d(source, target) with the three cases of the module docstring."""
    margin = margin.to(source)
    sq = (source - target) ** 2
    loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin)).to(source.dtype)
            + sq * ((source > target) & (target > margin) & (target <= 0)).to(source.dtype)
            + sq * (target > 0).to(source.dtype))
    return loss.mean(dim=0).sum()


def connector(s_channels: int, t_channels: int, kernel_size: int) -> nn.Sequential:
    """conv (no bias) + BN, He-normal over the output fan (as the reference), BN at weight 1, bias 0."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
    conv.weight.data.normal_(0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
    bn = nn.BatchNorm2d(t_channels)
    return nn.Sequential(conv, bn)


def with_batch_statistics(teacher: nn.Module) -> nn.Module:
    """A view of the teacher whose BNs normalise by the batch in any mode and keep no running statistics: the
    weights are the teacher's own tensors (no copy), the teacher itself is left as it was."""
    view = copy.deepcopy(teacher, memo={id(p): p for p in teacher.parameters()})
    for m in view.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return view


def aligned(*lists: list) -> list[list]:
    """Each list's last n entries, n the shortest length (the deepest stages pair up)."""
    n = min(len(x) for x in lists)
    return [list(x[len(x) - n:]) for x in lists]


@register_method("ofd", OFDConfig, paper="Heo et al., ICCV 2019", year=2019,
                 code="megvii-research/mdistiller: mdistiller/distillers/OFD.py")
class OFD(Distiller):
    """Overhaul of feature distillation; see the module docstring."""

    cfg: OFDConfig
    teacher_bn = True  # margins from the teacher's BN parameters, batch statistics: its BNs must not be folded

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: OFDConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        if self.input_shape is None or self.teacher is None:
            raise ValueError("ofd sizes its connectors from a shape probe: pass input_shape and a teacher")
        bns = getattr(self.teacher, "bn_before_relu", None)
        if bns is None:
            raise ConfigError(f"method=ofd: teacher {type(self.teacher).__name__} has no BN before its stages' "
                              "last ReLU to take margins from (OFD teachers: CIFAR ResNets, ResNets, WRN, VGG)")
        with torch.random.fork_rng(devices=[]):  # the probes must not move the run's RNG stream
            t_pre = probe_features(self.teacher, self.input_shape)[1].preact
            s_pre = probe_features(self.student, self.input_shape)[1].preact
        for side, pre, model in (("student", s_pre, self.student), ("teacher", t_pre, self.teacher)):
            if not pre:
                raise ConfigError(f"method=ofd: {side} {type(model).__name__} has no pre-ReLU stage maps "
                                  "(Features.preact) to distil")
        t_pre, s_pre, t_bns = aligned(t_pre, s_pre, bns())
        device = next(student.parameters()).device
        self.connectors = nn.ModuleList(connector(s.shape[1], t.shape[1], cfg.kernel_size)
                                        for s, t in zip(s_pre, t_pre)).to(device)
        for i, bn in enumerate(t_bns):
            self.register_buffer(f"margin{i}", bn_margins(bn).to(device), persistent=False)
        self.teacher = with_batch_statistics(self.teacher)

    def teacher_input(self) -> TeacherInput | None:
        """None: the batch-statistics teacher pass is this run's own, not the engine's shared eval-mode one."""
        return None

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(len(self.connectors))]

    def forward_train(self, batch: Batch, epoch: int,
                      teacher_out: TeacherOut | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s_logits, s_feats = self.student(batch.x)
        with torch.no_grad():
            _, t_feats = self.teacher(batch.x)
        s_pre, t_pre = aligned(s_feats.preact, t_feats.preact)
        n = len(self.connectors)
        feat = s_logits.new_zeros((), dtype=at_least_fp32(s_logits).dtype)
        for i, (conn, s, t, margin) in enumerate(zip(self.connectors, s_pre, t_pre, self.margins())):
            source = at_least_fp32(conn(s))
            target = at_least_fp32(F.adaptive_avg_pool2d(t, source.shape[-2:]))
            feat = feat + partial_l2(source, target, margin) / 2 ** (n - i - 1)
        return s_logits, {"ce": self.ce_loss(s_logits, batch.y), "ofd": self.cfg.weight * feat}
