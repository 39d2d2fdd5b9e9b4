"""Superfeature-explaining CNNs (KED: Chowdhury, Liang, Tizghadam, Albanese 2023), for CIFAR ResNets.

The network explains its own prediction: after the shared stem and first two stages, a 1x1 conv + BN + ReLU
widens to M·w channels, split into M groups ("hidden superfeatures"); each group runs its own copy of the
last stage at width w, is pooled and classified on its own (branch logits z^i), and the prediction is the
product of the branch distributions, z = Σ_i log_softmax(z^i) − (M−1)·log π (π a class prior; none for
CNNs). So p(y|x) ∝ Π_i p^i(y|x) / π(y)^(M−1): each branch's distribution is an exact share of the output.

The branch width w is chosen so that the network has as many parameters as the plain one it replaces; at
100 classes that gives the KED code's widths, 30 for ResNet20 and 26 for ResNet8.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.models.cifar_resnet import BasicBlock, CifarResNet
from oracle_kd.models.init import init_weights
from oracle_kd.models.registry import register_model

GROUPS = 4  # M in the KED code's every CNN experiment
PLAIN_OF: dict[str, str] = {}  # explaining model name -> the plain model it is matched to (and explains)


def combine_branches(branch_logits: Sequence[torch.Tensor], log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """z = Σ_i log_softmax(z^i) − (M−1)·log π, in fp32: the log of the normalised product of the branch
    distributions over the prior (up to a per-sample constant, which softmax and argmax ignore)."""
    z = torch.stack([F.log_softmax(b.float(), dim=1) for b in branch_logits]).sum(dim=0)
    if log_prior is not None:
        z = z - (len(branch_logits) - 1) * log_prior.float()
    return z


def matched_width(count: Callable[[int], int], target: int) -> int:
    """The width w ≥ 1 whose parameter count `count(w)` is closest to `target`. A layer's parameters are a
    quadratic in its width, so count is measured at w = 1, 2, 3 only (building small modules is cheap) and the
    quadratic's positive root is rounded to the better neighbour."""
    c1, c2, c3 = count(1), count(2), count(3)
    a = (c3 - 2 * c2 + c1) / 2
    b = c2 - c1 - 3 * a
    c = c1 - a - b
    root = (target - c) / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * (c - target))) / (2 * a)
    return min({max(1, math.floor(root)), max(1, math.ceil(root))}, key=lambda w: abs(a * w * w + b * w + c - target))


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class SFXCifarResNet(nn.Module):
    """A CIFAR ResNet whose last stage is M branch copies of width w over M channel groups (see module doc)."""

    bn_follows_conv = True  # conv1/bn1 of the stem

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3,
                 widths: tuple[int, int, int, int] = (16, 16, 32, 64), groups: int = GROUPS,
                 branch_width: int = 0) -> None:
        super().__init__()
        plain = CifarResNet(depth, num_classes, in_channels, widths)  # the shared part is the plain net's
        n = (depth - 2) // 6
        if branch_width <= 0:
            branch_width = self.matched_branch_width(depth, num_classes, in_channels, widths, groups)
        self.groups, self.branch_width, self.num_classes = groups, branch_width, num_classes
        self.conv1, self.bn1, self.layer1, self.layer2 = plain.conv1, plain.bn1, plain.layer1, plain.layer2
        w, mid = branch_width, widths[2]
        self.split = nn.Sequential(nn.Conv2d(mid, groups * w, 1, bias=False), nn.BatchNorm2d(groups * w), nn.ReLU())
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(w, w, 2 if i == 0 else 1) for i in range(n))) for _ in range(groups))
        self.fcs = nn.ModuleList(nn.Linear(w, num_classes) for _ in range(groups))
        self.stage_channels = [widths[0], widths[1], widths[2], groups * w]
        init_weights(self)

    @staticmethod
    def matched_branch_width(depth: int, num_classes: int, in_channels: int,
                             widths: tuple[int, int, int, int], groups: int) -> int:
        """The w that gives the plain network's parameter count (the shared part is the same in both, so
        only the split, the branches and their classifiers are counted against the plain last stage + fc)."""
        plain = CifarResNet(depth, num_classes, in_channels, widths)
        target = _parameters(plain.layer3) + _parameters(plain.fc)
        n, mid = (depth - 2) // 6, widths[2]

        def count(w: int) -> int:
            stage = nn.Sequential(*(BasicBlock(w, w, 2 if i == 0 else 1) for i in range(n)))
            branch = _parameters(stage) + w * num_classes + num_classes
            return mid * groups * w + 2 * groups * w + groups * branch

        return matched_width(count, target)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Combined logits z and Features: stages = [stem, layer1, layer2, branch maps side by side], blocks =
        the shared blocks then the branch blocks depth by depth (side by side), pooled = the branches' pooled
        vectors side by side, plus each branch's logits and last map."""
        stem = F.relu(self.bn1(self.conv1(x)))
        out, blocks = stem, []
        stages = [stem]
        for layer in (self.layer1, self.layer2):
            for block in layer:
                out = block(out)
                blocks.append(out)
            stages.append(out)
        parts = torch.chunk(self.split(out), self.groups, dim=1)
        per_depth: list[list[torch.Tensor]] = [[] for _ in range(len(self.branches[0]))]
        maps, pooled, logits = [], [], []
        for part, branch, fc in zip(parts, self.branches, self.fcs):
            h = part
            for d, block in enumerate(branch):
                h = block(h)
                per_depth[d].append(h)
            maps.append(h)
            pooled.append(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
            logits.append(fc(pooled[-1]))
        blocks.extend(torch.cat(hs, dim=1) for hs in per_depth)
        stages.append(blocks[-1])
        feats = Features(stages=stages, blocks=blocks, pooled=torch.cat(pooled, dim=1), branch_logits=logits,
                         branch_maps=maps)
        return combine_branches(logits), feats


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    PLAIN_OF[name] = name.removeprefix(f"sfx{GROUPS}_")

    @register_model(name)
    def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto",
                 branch_width: int = 0) -> SFXCifarResNet:
        # branch_width 0: matched to the plain network's parameter count at this class count
        return SFXCifarResNet(depth, num_classes, in_channels, widths, GROUPS, branch_width)

    _factory.__name__ = name
    _factory.__doc__ = f"KED superfeature-explaining {name.removeprefix(f'sfx{GROUPS}_')}: {GROUPS} branches."


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"sfx{GROUPS}_resnet{_depth}", _depth, (16, 16, 32, 64))
for _depth in (8, 32):
    _register(f"sfx{GROUPS}_resnet{_depth}x4", _depth, (32, 64, 128, 256))
for _depth in (44, 56):
    _register(f"sfx{GROUPS}_resnet{_depth}x2", _depth, (32, 32, 64, 128))
