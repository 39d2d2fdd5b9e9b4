"""Superfeature-explaining CNNs (KED: Chowdhury, Liang, Tizghadam, Albanese 2023): CIFAR ResNets, WRNs and VGGs.

The network explains its own prediction: a shared trunk (all but the last stage of the plain network), then a
1x1 conv that widens to M·w channels, split into M groups ("hidden superfeatures"); each group runs its own copy
of the last stage at width w and its own head (pooling and classifier) → branch logits z^i, and the prediction
is the product of the branch distributions, z = Σ_i log_softmax(z^i) − (M−1)·log π (π a class prior; none for
CNNs). So p(y|x) ∝ Π_i p^i(y|x) / π(y)^(M−1): each branch's distribution is an exact share of the output.

The branch width w is chosen so that the network has as many parameters as the plain one it replaces; at
100 classes that gives the KED code's widths, 30 for ResNet20 and 26 for ResNet8. A family is a subclass that
says what its trunk, split, branch and head are (`SuperfeatureNet`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.superfeatures import DEFAULT_GROUPS
from oracle_kd.models.cifar_resnet import BasicBlock, CifarResNet
from oracle_kd.models.init import init_weights
from oracle_kd.models.registry import register_model
from oracle_kd.models.vgg import VGG_WIDTHS, CifarVGG, ConvGroup, _halve
from oracle_kd.models.wrn import WideBasicBlock, WideResNet

GROUPS = DEFAULT_GROUPS  # M in the KED code's every CNN experiment
PLAIN_OF: dict[str, str] = {}  # explaining model name -> the plain model it is matched to (and explains)
Trunk = tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]  # (stages, blocks, output) of the shared part


def combine_branches(branch_logits: Sequence[torch.Tensor], log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """z = Σ_i log_softmax(z^i) − (M−1)·log π, in fp32: the log of the normalised product of the branch
    distributions over the prior (up to a per-sample constant, which softmax and argmax ignore)."""
    z = torch.stack([F.log_softmax(at_least_fp32(b), dim=1) for b in branch_logits]).sum(dim=0)
    if log_prior is not None:
        z = z - (len(branch_logits) - 1) * at_least_fp32(log_prior)
    return z


def matched_width(count: Callable[[int], int], target: int) -> int:
    """The width w ≥ 1 whose parameter count `count(w)` is closest to `target`. A layer's parameters are a
    quadratic in its width, so count is measured at w = 1, 2, 3 only (building small modules is cheap) and the
    quadratic's positive root is rounded to the better neighbour. The probes' random init is undone, so a
    model's weights for a seed do not depend on how its width was found."""
    with torch.random.fork_rng(devices=[]):
        c1, c2, c3 = count(1), count(2), count(3)
    a = (c3 - 2 * c2 + c1) / 2
    b = c2 - c1 - 3 * a
    c = c1 - a - b
    root = (target - c) / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * (c - target))) / (2 * a)
    return min({max(1, math.floor(root)), max(1, math.ceil(root))}, key=lambda w: abs(a * w * w + b * w + c - target))


def _parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


class Head(nn.Module):
    """A branch's pooling and classifier; `pre` is applied before pooling (WRN's final BN-ReLU)."""

    def __init__(self, width: int, num_classes: int, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.fc = nn.Linear(width, num_classes)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.pre(h), 1), 1)


class SuperfeatureNet(nn.Module):
    """Trunk → split into M groups → M branches → M heads, combined (see the module docstring).

    A family implements `trunk(x) -> (stages, blocks, out)`, `make_split(w)`, `make_branch(w)` (a module whose
    `outputs(h)` lists its blocks' outputs) and `make_head(w)`, plus `plain_tail()`: the modules of the plain
    network that the split, branches and heads replace, whose parameter count the branch width matches."""

    def build_branches(self, num_classes: int, groups: int, branch_width: int) -> None:
        self.num_classes, self.groups = num_classes, groups
        if branch_width <= 0:
            target = _parameters(*self.plain_tail())
            branch_width = matched_width(lambda w: _parameters(self.make_split(w), *(
                m for _ in range(groups) for m in (self.make_branch(w), self.make_head(w)))), target)
        w = self.branch_width = branch_width
        self.split = self.make_split(w)
        self.branches = nn.ModuleList(self.make_branch(w) for _ in range(groups))
        self.heads = nn.ModuleList(self.make_head(w) for _ in range(groups))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Combined logits z and Features: stages = the trunk's, then the branch maps side by side; blocks = the
        trunk's, then the branch blocks depth by depth (side by side); pooled = the branches' pooled vectors side
        by side; plus each branch's logits and last map."""
        stages, blocks, out = self.trunk(x)
        per_depth: list[list[torch.Tensor]] = []
        maps, pooled, logits = [], [], []
        for part, branch, head in zip(torch.chunk(self.split(out), self.groups, dim=1), self.branches, self.heads):
            outs = branch.outputs(part)
            per_depth = per_depth or [[] for _ in outs]
            for d, h in enumerate(outs):
                per_depth[d].append(h)
            maps.append(outs[-1])
            pooled.append(head.pool(outs[-1]))
            logits.append(head.fc(pooled[-1]))
        blocks = [*blocks, *(torch.cat(hs, dim=1) for hs in per_depth)]
        stages = [*stages, blocks[-1]]
        feats = Features(stages=stages, blocks=blocks, pooled=torch.cat(pooled, dim=1), branch_logits=logits,
                         branch_maps=maps)
        return combine_branches(logits), feats


class Blocks(nn.Sequential):
    """A branch of residual blocks: `outputs` lists each block's output."""

    def outputs(self, h: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self:
            h = block(h)
            outs.append(h)
        return outs


def _run_trunk(first: torch.Tensor, layers: Sequence[nn.Module]) -> Trunk:
    out, stages, blocks = first, [first], []
    for layer in layers:
        for block in layer:
            out = block(out)
            blocks.append(out)
        stages.append(out)
    return stages, blocks, out


class SFXCifarResNet(SuperfeatureNet):
    """CIFAR ResNet: stem, layer1 and layer2 shared; split = 1x1 conv + BN + ReLU; branches = layer3 copies."""

    bn_follows_conv = True  # conv1/bn1 of the stem

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3,
                 widths: tuple[int, int, int, int] = (16, 16, 32, 64), groups: int = GROUPS,
                 branch_width: int = 0) -> None:
        super().__init__()
        self.plain = [CifarResNet(depth, num_classes, in_channels, widths)]  # a list: not a submodule
        p = self.plain[0]
        self.n, self.mid, self.groups = (depth - 2) // 6, widths[2], groups
        self.conv1, self.bn1, self.layer1, self.layer2 = p.conv1, p.bn1, p.layer1, p.layer2
        self.build_branches(num_classes, groups, branch_width)
        self.stage_channels = [*widths[:3], groups * self.branch_width]
        del self.plain
        init_weights(self)

    def plain_tail(self) -> list[nn.Module]:
        return [self.plain[0].layer3, self.plain[0].fc]

    def make_split(self, w: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(self.mid, self.groups * w, 1, bias=False), nn.BatchNorm2d(self.groups * w),
                             nn.ReLU())

    def make_branch(self, w: int) -> Blocks:
        return Blocks(*(BasicBlock(w, w, 2 if i == 0 else 1) for i in range(self.n)))

    def make_head(self, w: int) -> Head:
        return Head(w, self.num_classes)

    def trunk(self, x: torch.Tensor) -> Trunk:
        return _run_trunk(F.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2))


class SFXWideResNet(SuperfeatureNet):
    """WRN (pre-activation): conv1, block1 and block2 shared; split = BN-ReLU-1x1 conv (pre-activation, like the
    blocks); branches = block3 copies (the first block strides, so it gets a 1x1 projection even at equal width);
    heads = the final BN-ReLU, pooling and fc per branch."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3, groups: int = GROUPS,
                 branch_width: int = 0) -> None:
        super().__init__()
        self.plain = [WideResNet(depth, widen_factor, num_classes, in_channels)]
        p = self.plain[0]
        self.n, self.mid, self.groups = (depth - 4) // 6, p.stage_channels[2], groups
        self.conv1, self.block1, self.block2 = p.conv1, p.block1, p.block2
        self.build_branches(num_classes, groups, branch_width)
        self.stage_channels = [*p.stage_channels[:3], groups * self.branch_width]
        del self.plain
        init_weights(self, linear="zero_bias")

    def plain_tail(self) -> list[nn.Module]:
        return [self.plain[0].block3, self.plain[0].bn1, self.plain[0].fc]

    def make_split(self, w: int) -> nn.Module:
        return nn.Sequential(nn.BatchNorm2d(self.mid), nn.ReLU(), nn.Conv2d(self.mid, self.groups * w, 1, bias=False))

    def make_branch(self, w: int) -> Blocks:
        first = WideBasicBlock(w, w, 2)
        first.convShortcut = nn.Conv2d(w, w, 1, stride=2, bias=False)
        return Blocks(first, *(WideBasicBlock(w, w) for _ in range(self.n - 1)))

    def make_head(self, w: int) -> Head:
        return Head(w, self.num_classes, nn.Sequential(nn.BatchNorm2d(w), nn.ReLU()))

    def trunk(self, x: torch.Tensor) -> Trunk:
        return _run_trunk(self.conv1(x), (self.block1.layer, self.block2.layer))


class VGGBranch(nn.Module):
    """Groups 3 and 4 of a VGG at width w; `outputs` lists every conv layer's output."""

    def __init__(self, w: int, layers: tuple[int, int]) -> None:
        super().__init__()
        self.block3, self.block4 = ConvGroup(w, (w,) * layers[0]), ConvGroup(w, (w,) * layers[1])

    def outputs(self, h: torch.Tensor) -> list[torch.Tensor]:
        first = self.block3.layer_outputs(h)
        return [*first, *self.block4.layer_outputs(first[-1])]


class SFXVGG(SuperfeatureNet):
    """VGG-BN: groups 0-2 (with their pools) shared; split = 1x1 conv + BN + ReLU; branches = groups 3-4 copies."""

    def __init__(self, widths: tuple[tuple[int, ...], ...], num_classes: int, in_channels: int = 3,
                 groups: int = GROUPS, branch_width: int = 0) -> None:
        super().__init__()
        self.plain = [CifarVGG(widths, num_classes, in_channels)]
        p = self.plain[0]
        self.mid, self.groups, self.layers = widths[2][-1], groups, (len(widths[3]), len(widths[4]))
        self.block0, self.block1, self.block2 = p.block0, p.block1, p.block2
        self.build_branches(num_classes, groups, branch_width)
        self.stage_channels = [*(w[-1] for w in widths[:3]), groups * self.branch_width]
        del self.plain
        init_weights(self, linear="small")

    def plain_tail(self) -> list[nn.Module]:
        return [self.plain[0].block3, self.plain[0].block4, self.plain[0].classifier]

    def make_split(self, w: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(self.mid, self.groups * w, 1, bias=False), nn.BatchNorm2d(self.groups * w),
                             nn.ReLU())

    def make_branch(self, w: int) -> VGGBranch:
        return VGGBranch(w, self.layers)

    def make_head(self, w: int) -> Head:
        return Head(w, self.num_classes)

    def trunk(self, x: torch.Tensor) -> Trunk:
        stages, blocks, out = [], [], x
        for group in (self.block0, self.block1, self.block2):
            layers = group.layer_outputs(out)
            blocks += layers
            stages.append(layers[-1])
            out = _halve(layers[-1])
        return stages, blocks, out


def _register(plain: str, build: Callable[[int, int, int], SuperfeatureNet]) -> None:
    name = f"sfx{GROUPS}_{plain}"
    PLAIN_OF[name] = plain

    @register_model(name)
    def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto",
                 branch_width: int = 0) -> SuperfeatureNet:
        # branch_width 0: matched to the plain network's parameter count at this class count
        return build(num_classes, in_channels, branch_width)

    _factory.__name__ = name
    _factory.__doc__ = f"KED superfeature-explaining {plain}: {GROUPS} branches, parameters matched to {plain}."


def _resnet(depth: int, widths: tuple[int, int, int, int]) -> Callable[[int, int, int], SuperfeatureNet]:
    return lambda classes, channels, w: SFXCifarResNet(depth, classes, channels, widths, GROUPS, w)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _resnet(_depth, (16, 16, 32, 64)))
for _depth in (8, 32):
    _register(f"resnet{_depth}x4", _resnet(_depth, (32, 64, 128, 256)))
for _depth in (44, 56):
    _register(f"resnet{_depth}x2", _resnet(_depth, (32, 32, 64, 128)))
for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(f"wrn_{_depth}_{_k}", lambda c, ch, w, d=_depth, k=_k: SFXWideResNet(d, k, c, ch, GROUPS, w))
for _name in ("vgg8", "vgg13"):
    _register(_name, lambda c, ch, w, v=VGG_WIDTHS[_name]: SFXVGG(v, c, ch, GROUPS, w))
