"""CIFAR ResNets (He et al. 2016, section 4.2): basic blocks, depth 6n+2, three stages.

Module names follow the released checkpoints (``conv1``, ``bn1``, ``layer{1,2,3}.{i}``, ``fc``,
``downsample.{0,1}``) so they load with ``strict=True``. The wide ``x4`` variants follow
RepDistiller/mdistiller (stem 32, stages 64-128-256), the usual KD teachers; the ``x2`` ones (stem 32,
stages 32-64-128) are the teachers of the KED paper's released code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.models.init import init_weights
from oracle_kd.models.registry import register_model


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN where a block changes shape (option B), else None (identity); keys downsample.{0,1}."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))




def run_stages(stem_out: torch.Tensor, layers: tuple[nn.Sequential, ...], fc: nn.Linear) -> tuple[torch.Tensor, Features]:
    """The residual stages after a stem, collecting the Features contract: stem + stage outputs, every block's
    output, each stage's last residual sum before its ReLU, and the pooled vector fed to fc. Shared by both
    ResNet families so the contract is defined once."""
    out = stem_out
    stages, blocks, preact = [out], [], []
    for layer in layers:
        for block in layer:
            pre = block.residual_sum(out)
            out = F.relu(pre)
            blocks.append(out)
        stages.append(out)
        preact.append(pre)
    pooled = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
    return fc(pooled), Features(stages=stages, blocks=blocks, pooled=pooled, preact=preact)


def last_bns(layers: tuple[nn.Sequential, ...]) -> list[nn.BatchNorm2d]:
    """Each stage's BN before its last ReLU (the last block's `last_bn`): what OFD's margins read."""
    return [getattr(layer[-1], layer[-1].last_bn) for layer in layers]


def apply_shortcut(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's shortcut of x: its projection (stored under `block.shortcut_name`), or x itself."""
    projection = getattr(block, block.shortcut_name)
    return x if projection is None else projection(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut; a 1x1 projection only where the shape changes (option B)."""

    bn_follows_conv = True  # each bnK normalises convK's output, so BN folding may pair them by name
    expansion = 1
    shortcut_name = "downsample"  # the projection's state_dict key (mdistiller's resnetv2 says "shortcut")
    last_bn = "bn2"  # the BN whose output (plus the shortcut) the block's ReLU receives

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        setattr(self, self.shortcut_name, projection_shortcut(in_planes, planes, stride))

    def residual_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its final ReLU."""
        # Out-of-place ops throughout: block outputs are handed to distillation losses via Features.
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return out + apply_shortcut(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual_sum(x))


class CifarResNet(nn.Module):
    """ResNet for small images; adaptive pooling makes it work for any input of at least 8 px."""

    bn_follows_conv = True  # each bnK normalises convK's output, so BN folding may pair them by name

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        stem, *stage_widths = widths
        self.num_classes = num_classes
        self.stage_channels: list[int] = list(widths)

        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        layers = []
        for planes, stride in zip(stage_widths, (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Return logits and the intermediate features that distillation methods consume."""
        return run_stages(F.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2, self.layer3), self.fc)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Per stage, the BN before its last ReLU (OFD's margins)."""
        return last_bns((self.layer1, self.layer2, self.layer3))


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    @register_model(name)
    def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto") -> CifarResNet:
        # image_size/stem are accepted so callers can pass them for every family; a CIFAR ResNet's
        # 3x3 stem and adaptive pooling already fit any input of at least 8 px, so they change nothing.
        return CifarResNet(depth, num_classes, in_channels, widths)

    _factory.__name__ = name
    _factory.__doc__ = f"CIFAR {name}: depth {depth}, widths {widths}."


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
for _depth in (8, 32):
    _register(f"resnet{_depth}x4", _depth, (32, 64, 128, 256))
for _depth in (44, 56):  # twice as wide: the KED authors' teachers
    _register(f"resnet{_depth}x2", _depth, (32, 32, 64, 128))
