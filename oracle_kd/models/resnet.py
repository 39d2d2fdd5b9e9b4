"""ImageNet ResNets (He et al. 2016) in torchvision's exact layout, for Tiny-ImageNet and ImageNet runs.

Module names and shapes match ``torchvision.models.resnet{18,34,50,101}`` (``conv1``, ``bn1``,
``layer{1..4}.{i}``, ``downsample.{0,1}``, ``fc``), so torchvision checkpoints load with ``strict=True``
and pretrained teachers need no key remapping. Unlike torchvision, ``forward`` returns
``(logits, Features)`` so every distillation method works unchanged, and no ReLU is in place: block
outputs are handed to losses and must not be overwritten.

``stem="cifar"`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv (no pool) so 64-px Tiny-ImageNet
inputs keep a usable resolution (the common Tiny-ImageNet KD setup); conv1 is then (64, C, 3, 3) and
torchvision's conv1 weight no longer fits, which is expected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.errors import ConfigError
from oracle_kd.models.cifar_resnet import (  # BasicBlock: as torchvision's
    BasicBlock,
    apply_shortcut,
    last_bns,
    projection_shortcut,
    run_stages,
)
from oracle_kd.models.init import init_weights
from oracle_kd.models.registry import register_model

STEMS = ("auto", "cifar", "imagenet")
SMALL_IMAGE_MAX = 64
"""With ``stem="auto"``, inputs up to this size (Tiny-ImageNet) get the CIFAR stem: the ImageNet stem
would shrink a 64-px image to 16 px before layer1 and 2 px at layer4."""


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's "ResNet v1.5"), 1x1 expand x4, plus a shortcut."""

    bn_follows_conv = True  # each bnK normalises convK's output, so BN folding may pair them by name
    expansion = 4
    shortcut_name = "downsample"  # the projection's state_dict key (mdistiller's resnetv2 says "shortcut")
    last_bn = "bn3"  # the BN whose output (plus the shortcut) the block's ReLU receives

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        setattr(self, self.shortcut_name, projection_shortcut(in_planes, out_planes, stride))

    def residual_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + apply_shortcut(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual_sum(x))


def resolve_stem(stem: str, image_size: int | None) -> str:
    """``"cifar"`` or ``"imagenet"``; ``"auto"`` picks from the image size (CIFAR stem up to 64 px)."""
    if stem not in STEMS:
        raise ConfigError(f"model stem={stem!r} is not one of: {', '.join(STEMS)}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"model image_size={image_size!r} must be a positive integer")
    if stem != "auto":
        return stem
    return "cifar" if image_size is not None and image_size <= SMALL_IMAGE_MAX else "imagenet"


class ResNet(nn.Module):
    """torchvision's ResNet with a choice of stem; adaptive pooling makes any input size work
    (at least 32 px with the ImageNet stem, 8 px with the CIFAR stem)."""

    bn_follows_conv = True  # each bnK normalises convK's output, so BN folding may pair them by name

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet' here (resolve 'auto' first), got {stem!r}")
        expansion = getattr(block, "expansion", 1)
        self.stem = stem
        self.num_classes = num_classes
        self.stage_channels: list[int] = [64] + [64 * 2**i * expansion for i in range(4)]

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, n_blocks in enumerate(layers):
            planes, stride = 64 * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)  # torchvision's init, so fresh models train as torchvision's do

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Return logits and the features distillation methods consume (stem output = after max-pool)."""
        stem = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return run_stages(stem, (self.layer1, self.layer2, self.layer3, self.layer4), self.fc)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Per stage, the BN before its last ReLU (OFD's margins)."""
        return last_bns((self.layer1, self.layer2, self.layer3, self.layer4))


ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def _register(name: str) -> None:
    block, layers = ARCHS[name]

    @register_model(name)
    def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto") -> ResNet:
        return ResNet(block, layers, num_classes, in_channels, resolve_stem(stem, image_size))

    _factory.__name__ = name
    _factory.__doc__ = f"torchvision-layout {name}: {block.__name__} x {layers}; stem auto/cifar/imagenet."


for _name in ARCHS:
    _register(_name)
