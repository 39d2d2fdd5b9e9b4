"""ReviewKD, "Distilling Knowledge via Knowledge Review" (Chen, Liu, Zhao, Jia; CVPR 2021), as mdistiller trains it.

Reference code: megvii-research/mdistiller `mdistiller/distillers/ReviewKD.py` (defaults in `engine/cfg.py` and
`configs/cifar100/reviewkd.yaml`) and the authors' dvlab-research/ReviewKD `CIFAR-100/model/reviewkd.py`,
`CIFAR-100/train.py` and `CIFAR-100/script/reviewKD.sh` (the per-pair weights).

Levels. The student gives one map per stage after the stem (`Features.stages[1:]`, post-ReLU as mdistiller's
`feats`; `Features.preact` with `student_preact`, as mdistiller's ImageNet configs) and its pooled feature as a
1×1 map: levels 1 … n, shallow to deep. The teacher gives its pre-ReLU stage maps (`Features.preact`, which the
references read; on the engine's BN-folded teacher they are the same values, computed by the folded convs) and
its pooled feature; a family without pre-ReLU maps (MobileNetV2, whose stages end in a linear bottleneck, and the
superfeature models) gives its stage outputs `Features.stages[1:]` instead. When the
two counts differ the DEEPEST levels pair up and the other side's shallowest extra levels are left out (the
references zip the deepest-first lists, which drops the student's stem the same way).

Review (attention-based fusion, ABF), deepest level first, s_i the student's map, r_{i+1} the residual from the
level below it:

    x_i = BN(conv1×1(s_i))                                          (to a mid width m = min(512, C_deepest))
    [a, b] = sigmoid(conv1×1([x_i, up(r_{i+1})]))                   (two attention maps, not at the deepest level)
    r_i = resize(a·x_i + b·up(r_{i+1}), teacher's size at level i)
    f_i = BN(conv3×3(r_i))                                          (to the teacher's width at level i)

    HCL(f, t) = [MSE(f, t) + Σ_k w_k · MSE(pool_k(f), pool_k(t))] / (1 + Σ_k w_k)
        pool_k: adaptive average pooling to k×k, k = 4, 2, 1 where k is smaller than the map; w halves at
        each level actually used (1/2, 1/4, 1/8 above 4×4; 1/2, 1/4 at 3×3 and 4×4; 1/2 at 2×2; none at 1×1)

    L = ce_weight·CE + weight · min(epoch / warmup, 1) · Σ_i HCL(f_i, t_i)           (1-based epochs)

Channel widths and sizes come from a shape probe of both models, so any pair of CNN families works; for
resnet32x4→resnet8x4 this gives mdistiller's hand-written IN/OUT_CHANNELS [64, 128, 256, 256] and SHAPES
[1, 8, 16, 32], and for the other CIFAR students the official `build_review_kd` lists.

Defaults: CE 1, weight 5.0 (mdistiller's CIFAR config and the official weight of most CIFAR pairs; its `cfg.py`
default is 1.0), warm-up 20 epochs, mid width at most 512, student post-ReLU maps. The official per-pair weights
are a table in conf/method/reviewkd_crd.yaml (`weight_by_pair`, resolved by `for_pair`).

Kept from the reference: the residual handed to the next level is the fused map AFTER it was resized to the
teacher's size (the reference returns it that way), and the attention conv keeps PyTorch's default init while
the two other convs are Kaiming-uniform (a = 1). Changed, on purpose: the reference resizes with nearest
interpolation in both directions; here a map is only ever enlarged by nearest interpolation (which the
reference does on every benchmark pair) and shrunk by adaptive average pooling, where nearest would drop
positions (a student map larger than the teacher's, e.g. a ResNet student under a VGG teacher). Sizes are
(H, W) pairs and a pooling level is used only when smaller than both sides, so non-square maps work. The
official script counts epochs from 0 (its first epoch has no review term); mdistiller and this code from 1.
Refused: a model with no spatial stage maps (the MLPs: every feature is 1×1, nothing to fuse or pool), and
`student_preact` on a student without pre-ReLU maps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.features import Features
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.errors import ConfigError, require
from oracle_kd.methods.base import MethodConfig, TermsDistiller, probe_features
from oracle_kd.methods.registry import register_method

POOL_SIZES = (4, 2, 1)  # HCL's pyramid: adaptive average pooling to k×k, coarser levels weighing half as much


@dataclass
class ReviewKDConfig(MethodConfig):
    """L = ce_weight·CE + weight·min(epoch/warmup, 1)·Σ HCL(ABF(student levels), teacher levels); mdistiller's
    CIFAR config (weight 5). warmup = 0 means no warm-up. The term is a mean over positions of raw maps (no
    size dependence to undo), so the weight is not rescaled for small inputs."""

    name: str = "reviewkd"
    weight: float = 5.0
    warmup: int = 20
    max_mid_channels: int = 512
    # True: the student's pre-ReLU stage maps (mdistiller's STU_PREACT, set in its ImageNet configs)
    student_preact: bool = False
    # "teacher-student" -> weight (the official CIFAR-100 script); resolved by for_pair, so not part of a run's identity
    weight_by_pair: Optional[dict[str, float]] = dataclasses.field(default_factory=dict, metadata={"identity": False})

    def validate(self) -> None:
        super().validate()
        require(self.weight >= 0, "method.weight", self.weight, "must be >= 0")
        require(self.warmup >= 0, "method.warmup", self.warmup, "must be >= 0 (0 = no warm-up)")
        require(self.max_mid_channels >= 1, "method.max_mid_channels", self.max_mid_channels, "must be >= 1")
        for pair, weight in (self.weight_by_pair or {}).items():
            require(weight >= 0, f"method.weight_by_pair.{pair}", weight, "must be >= 0")

    def for_pair(self, teacher: str, student: str) -> "ReviewKDConfig":
        """The weight for this pair from `weight_by_pair` (else `weight`), then the table is dropped: a run's
        identity is the same as with that weight given directly."""
        cfg = super().for_pair(teacher, student)
        if not cfg.weight_by_pair:
            return cfg
        weight = cfg.weight_by_pair.get(f"{teacher}-{student}", cfg.weight)
        return dataclasses.replace(cfg, weight=weight, weight_by_pair=None)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`x` at spatial `size`: unchanged when already there, shrunk by adaptive average pooling (every position
    counts), enlarged by nearest interpolation (the reference's upsampling)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if size[0] < h or size[1] < w:
        x = F.adaptive_avg_pool2d(x, (min(h, size[0]), min(w, size[1])))
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="nearest")
    return x


def hcl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss of one level: the map's MSE and its pooled pyramid's, normalised by the weights."""
    loss = F.mse_loss(student, teacher)
    h, w = student.shape[-2:]
    weight, total = 1.0, 1.0
    for k in POOL_SIZES:
        if k >= min(h, w):  # only pool to a grid coarser than the map
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, k), F.adaptive_avg_pool2d(teacher, k))
        total += weight
    return loss / total


def hcl_loss(students: list[torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
    """Σ over levels of HCL, in fp32 (or the maps' wider dtype)."""
    return sum(hcl(at_least_fp32(s), at_least_fp32(t)) for s, t in zip(students, teachers, strict=True))


class ABF(nn.Module):
    """Attention-based fusion of one level: reduce the student's map to the mid width, mix it with the residual
    from the deeper level by two per-position sigmoid attention maps, resize to the teacher's size, project to the
    teacher's width. The deepest level (`fuse=False`) has no residual to mix."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.attention = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None)
        self.project = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(out_channels))
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.project[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the level's output at the teacher's width and size, the residual for the next shallower level)."""
        x = self.reduce(x)
        if self.attention is not None:
            assert residual is not None, "a fusing level needs the deeper level's residual"
            residual = resize(residual, tuple(x.shape[-2:]))
            att = self.attention(torch.cat([x, residual], dim=1))
            x = x * att[:, :1] + residual * att[:, 1:]
        x = resize(x, out_size)
        return self.project(x), x


@dataclass(frozen=True)
class Level:
    """One reviewed level: the student's and the teacher's map there, as (channels, (H, W))."""

    in_channels: int
    out_channels: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]


def student_maps(feats: Features, preact: bool) -> list[torch.Tensor]:
    """Shallow to deep: the stages after the stem (or their pre-ReLU values), then the pooled feature as 1×1."""
    maps = feats.preact if preact else feats.stages[1:]
    return [*maps, feats.pooled[:, :, None, None]]


def teacher_maps(feats: Features) -> list[torch.Tensor]:
    """Shallow to deep: the pre-ReLU stage maps (the stage outputs where a family has none), then pooled as 1×1."""
    maps = feats.preact or feats.stages[1:]
    return [*maps, feats.pooled[:, :, None, None]]


def plan_levels(s_maps: list[torch.Tensor], t_maps: list[torch.Tensor]) -> list[Level]:
    """The reviewed levels, shallow to deep, from probed maps: the deepest `min(len)` of each side pair up."""
    n = min(len(s_maps), len(t_maps))
    return [Level(s.shape[1], t.shape[1], tuple(s.shape[-2:]), tuple(t.shape[-2:]))
            for s, t in zip(s_maps[len(s_maps) - n:], t_maps[len(t_maps) - n:])]


@register_method("reviewkd", ReviewKDConfig, paper="Chen, Liu, Zhao, Jia, CVPR 2021", year=2021,
                 code="megvii-research/mdistiller: mdistiller/distillers/ReviewKD.py")
class ReviewKD(TermsDistiller):
    """Knowledge review; see the module docstring. The ABF modules are submodules: they train with the student's
    optimizer and are saved with the run, never with the student."""

    cfg: ReviewKDConfig

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: ReviewKDConfig,
                 input_shape: tuple[int, ...] | None = None, data: DataInfo | None = None) -> None:
        super().__init__(student, teacher, cfg, input_shape, data)
        if self.input_shape is None or self.teacher is None:
            raise ValueError("reviewkd sizes its fusion modules from a shape probe: pass input_shape and a teacher")
        with torch.random.fork_rng(devices=[]):  # the probes must not move the run's RNG stream
            s_feats = probe_features(self.student, self.input_shape)[1]
            t_feats = probe_features(self.teacher, self.input_shape)[1]
        if cfg.student_preact and not s_feats.preact:
            raise ConfigError(f"method=reviewkd: student {type(self.student).__name__} has no pre-ReLU stage maps "
                              "(Features.preact); use method.student_preact=false")
        s_maps, t_maps = student_maps(s_feats, cfg.student_preact), teacher_maps(t_feats)
        for side, maps, model in (("student", s_maps, self.student), ("teacher", t_maps, self.teacher)):
            if all(m.shape[-2:] == (1, 1) for m in maps):
                raise ConfigError(f"method=reviewkd: {side} {type(model).__name__} has no spatial stage maps (only "
                                  "1x1 features) to fuse and pool; ReviewKD serves CNN families")
        self.levels = plan_levels(s_maps, t_maps)
        mid = min(cfg.max_mid_channels, self.levels[-1].in_channels)
        p = next(student.parameters())
        self.abfs = nn.ModuleList(ABF(lv.in_channels, mid, lv.out_channels, fuse=i < len(self.levels) - 1)
                                  for i, lv in enumerate(self.levels)).to(device=p.device, dtype=p.dtype)

    def warmup_factor(self, epoch: int) -> float:
        """min(epoch / warmup, 1) with 1-based epochs (mdistiller's ramp)."""
        return 1.0 if self.cfg.warmup == 0 else min(epoch / self.cfg.warmup, 1.0)

    def review(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF outputs, shallow to deep, for the student's maps of the reviewed levels (shallow to deep);
        the fusion runs deepest first, each level mixing in the residual of the one below it."""
        outs: list[torch.Tensor] = []
        residual = None
        for abf, x, level in zip(reversed(self.abfs), reversed(maps), reversed(self.levels), strict=True):
            out, residual = abf(x, residual, level.out_size)
            outs.append(out)
        return outs[::-1]

    def terms(self, student: TeacherOut, teacher: TeacherOut, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        n = len(self.levels)
        fused = self.review(student_maps(student[1], self.cfg.student_preact)[-n:])
        review = hcl_loss(fused, teacher_maps(teacher[1])[-n:])
        return {"reviewkd": self.warmup_factor(epoch) * self.cfg.weight * review}
