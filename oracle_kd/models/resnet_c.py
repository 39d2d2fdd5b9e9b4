"""mdistiller's CIFAR-stem ResNets (``resnetv2``): ``resnet18c`` and ``resnet50c``.

Not the same models as ``resnet18``/``resnet50`` (torchvision layout, ``oracle_kd.models.resnet``): the
``c`` names have mdistiller's fixed 3x3 stride-1 stem with no max-pool and its module names (``shortcut.{0,1}``
for the 1x1 projection, ``linear`` for the classifier), so a torchvision checkpoint does not load into them
and theirs does not load into ours. They exist so mdistiller's released CIFAR-100 ``ResNet50`` teacher loads
with ``strict=True`` as ``resnet50c``. Four stages 64-128-256-512 (x4 for Bottleneck), the stride on the 3x3
conv, kaiming-normal (fan_out) convs, BN weight 1 bias 0, default Linear init (no zero-init residual).

Features (as mdistiller's ``feats``, its pooled vector aside): ``stages`` = [stem after ReLU, layer1..layer4
outputs after their last block's ReLU]; ``blocks`` = every block's output after its ReLU; ``pooled`` = the
global mean of layer4's output. Adaptive pooling (as mdistiller's) lets 8x8 inputs through (layer4 at 1x1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.models.cifar_resnet import BasicBlock, run_stages
from oracle_kd.models.init import init_weights
from oracle_kd.models.registry import register_model
from oracle_kd.models.resnet import Bottleneck, ResNet


class BasicBlockC(BasicBlock):
    """Our CIFAR BasicBlock under mdistiller's names: the projection is ``shortcut.{0,1}`` (an identity shortcut
    has no parameters there, mdistiller's empty nn.Sequential, and adds no keys here either)."""

    shortcut_name = "shortcut"


class BottleneckC(Bottleneck):
    """torchvision's Bottleneck (stride on the 3x3, as mdistiller's resnetv2) under mdistiller's names."""

    shortcut_name = "shortcut"


class ResNetC(nn.Module):
    """mdistiller's CIFAR ResNet: 3x3/1 stem (no pool), four stages, adaptive average pool, ``linear``."""

    bn_follows_conv = True  # the stem's bn1 normalises conv1's output

    def __init__(
        self,
        block: type[BasicBlockC] | type[BottleneckC],
        layers: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        # channels of Features.stages; mdistiller's own stage_channels reads [256, 512, 1024, 2048] for
        # every depth (the Bottleneck values, stem excluded), so it is not copied
        self.stage_channels: list[int] = [64] + [64 * 2**i * block.expansion for i in range(4)]

        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, n_blocks in enumerate(layers):
            planes, stride = 64 * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)
        init_weights(self)  # the same init mdistiller's resnetv2 applies

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Return logits and the features distillation methods consume (points as mdistiller's ``feats``)."""
        stem = F.relu(self.bn1(self.conv1(x)))
        return run_stages(stem, (self.layer1, self.layer2, self.layer3, self.layer4), self.linear)

    bn_before_relu = ResNet.bn_before_relu  # the same four stages under the same names


ARCHS: dict[str, tuple[type[BasicBlockC] | type[BottleneckC], tuple[int, int, int, int]]] = {
    "resnet18c": (BasicBlockC, (2, 2, 2, 2)),  # mdistiller ResNet18
    "resnet50c": (BottleneckC, (3, 4, 6, 3)),  # mdistiller ResNet50 (its CIFAR-100 teacher)
}


def _register(name: str) -> None:
    block, layers = ARCHS[name]

    @register_model(name)
    def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto") -> ResNetC:
        # image_size/stem are accepted because the engine passes them to every family; they change nothing:
        # the stem is always mdistiller's 3x3/1 one (its checkpoints need it) and pooling is adaptive.
        return ResNetC(block, layers, num_classes, in_channels)

    _factory.__name__ = name
    _factory.__doc__ = (f"mdistiller CIFAR-stem {name}: {block.__name__} x {layers}; "
                        f"not the torchvision-layout {name[:-1]}.")


for _name in ARCHS:
    _register(_name)
