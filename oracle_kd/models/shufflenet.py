"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) for CIFAR, as RepDistiller/mdistiller's
``ShuffleV1`` and ``ShuffleV2`` students.

Both keep the full 32-px resolution after a 1x1 stem to 24 channels (no stride, no max-pool) and halve it in
each of three stages. Module names follow mdistiller (``conv1``, ``bn1``, ``layer{1,2,3}.{i}.convK/bnK``, V2's
head ``conv2``/``bn2``, ``linear``) so its checkpoints load with ``strict=True``.

Features (mdistiller's ``feats`` and ``preact_feats``, same points):
  shufflenetv1 stages: stem after ReLU (24 ch, H); layer1..3 outputs after the unit's final ReLU (240, 480,
          960 ch at H/2, H/4, H/8). pooled: the mean of stages[-1].
  shufflenetv2 stages: stem after ReLU (24 ch, H); layer1..3 outputs after the last unit's concat and
          shuffle (116, 232, 464 ch at H/2, H/4, H/8; both halves are post-ReLU). pooled: the mean of the 1x1
          head conv's output (1024 ch, after its BN-ReLU), so not the mean of stages[-1] (see ``head``).
  blocks: the output of every unit (V1: 4+8+4 bottlenecks; V2: per stage one down-sampling unit then 3/7/3
          basic units), the last one is stages[-1].
  preact: per stage, what the last unit's final ReLU receives (V1: the residual sum; V2: the kept half and the
          branch before its ReLU, concatenated, not shuffled, as mdistiller). No single BN precedes these, so a
          ShuffleNet has no ``bn_before_relu`` and cannot be an OFD teacher (as in mdistiller).
Both run on 32x32 and on 8x8 inputs (the last stage is then 1x1). Neither mdistiller model initialises its
weights explicitly, so PyTorch's default init is kept here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.models.registry import register_model

STEM = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups ([g, C/g] -> [C/g, g]), so grouped convs exchange data."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _stem(in_channels: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(in_channels, STEM, 1, bias=False), nn.BatchNorm2d(STEM)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)


def _pointwise(in_ch: int, out_ch: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, groups=groups, bias=False)


def _run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    """Stem, three stages and the pooled head, collecting Features; shared by both ShuffleNets."""
    out = F.relu(model.bn1(model.conv1(x)))
    stages, blocks, preact = [out], [], []
    for layer in (model.layer1, model.layer2, model.layer3):
        for unit in layer[:-1]:
            out = unit(out)
            blocks.append(out)
        out, pre = layer[-1].with_preact(out)
        blocks.append(out)
        stages.append(out)
        preact.append(pre)
    # mdistiller pools with avg_pool2d(4) on the 4x4 map of a 32-px input: the global mean, which adaptive
    # pooling equals there and which also fits smaller inputs.
    pooled = torch.flatten(F.adaptive_avg_pool2d(model.head(out), 1), 1)
    return model.linear(pooled), Features(stages=stages, blocks=blocks, pooled=pooled, preact=preact)


class ShuffleUnitV1(nn.Module):
    """Grouped 1x1, channel shuffle, 3x3 depthwise, grouped 1x1; added to the input, or (stride 2)
    concatenated with its 3x3 average pool, then ReLU. ``out_ch`` is this branch's width."""

    bn_follows_conv = True  # each bnK normalises convK's output, so BN folding may pair them by name

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, group_first: bool = True) -> None:
        super().__init__()
        mid = out_ch // 4
        # The first unit after the 24-channel stem keeps its first 1x1 ungrouped (too few channels to split).
        self.first_groups = groups if group_first else 1
        self.stride = stride
        self.conv1 = _pointwise(in_ch, mid, self.first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _depthwise(mid, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _pointwise(mid, out_ch, groups)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, the sum or concatenation its final ReLU receives)."""
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            pre = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            pre = out + x
        return F.relu(pre), pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_preact(x)[0]


class ShuffleNetV1(nn.Module):
    """CIFAR ShuffleNet V1; the first unit of each stage halves the resolution and widens by concatenation."""

    bn_follows_conv = True  # the stem's bn1 normalises conv1's output

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = (240, 480, 960),
                 units: tuple[int, ...] = (4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stage_channels: list[int] = [STEM, *widths]
        self.conv1, self.bn1 = _stem(in_channels)
        in_ch = STEM
        layers = []
        for stage, (width, n) in enumerate(zip(widths, units)):
            unit_list = []
            for i in range(n):
                # stride-2 units output only the new channels; the pooled input is concatenated to them
                branch = width - in_ch if i == 0 else width
                unit_list.append(ShuffleUnitV1(in_ch, branch, 2 if i == 0 else 1, groups,
                                               group_first=not (stage == 0 and i == 0)))
                in_ch = width
            layers.append(nn.Sequential(*unit_list))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(in_ch, num_classes)

    def head(self, last_stage: torch.Tensor) -> torch.Tensor:
        """The map that is pooled for the classifier: the last stage itself (V1 has no head conv)."""
        return last_stage

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Return logits and the intermediate features that distillation methods consume."""
        return _run(self, x)


class DownUnitV2(nn.Module):
    """Stride-2 unit: both branches see the whole input (left: depthwise, 1x1; right: 1x1, depthwise, 1x1),
    each gives half the output channels; concat, shuffle."""

    bn_follows_conv = True  # each bnK normalises convK's output, so BN folding may pair them by name

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.conv1 = _depthwise(in_ch, 2)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = _pointwise(in_ch, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _pointwise(in_ch, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _depthwise(mid, 2)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _pointwise(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class BasicUnitV2(nn.Module):
    """Stride-1 unit: split the channels in halves, keep the first, run 1x1, depthwise, 1x1 on the second;
    concat, shuffle."""

    bn_follows_conv = True  # each bnK normalises convK's output, so BN folding may pair them by name

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        half = channels - self.split
        self.conv1 = _pointwise(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _depthwise(half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _pointwise(half, half)
        self.bn3 = nn.BatchNorm2d(half)

    def with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, [kept half, branch before its last ReLU]): as mdistiller's preact, concatenated but not
        shuffled."""
        kept, pre = self.branch(x)
        return channel_shuffle(torch.cat([kept, F.relu(pre)], 1), 2), torch.cat([kept, pre], 1)

    def branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the kept half, the other half through 1x1, depthwise, 1x1 before the last ReLU)."""
        kept, x2 = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(x2)))
        return kept, self.bn3(self.conv3(self.bn2(self.conv2(out))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, pre = self.branch(x)
        return channel_shuffle(torch.cat([kept, F.relu(pre)], 1), 2)


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNet V2 (width 1: 116-232-464, head 1024); each stage: one down unit, then basic units."""

    bn_follows_conv = True  # bn1 normalises the stem's conv1, bn2 the head's conv2

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = (116, 232, 464),
                 units: tuple[int, ...] = (3, 7, 3), head_channels: int = 1024) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stage_channels: list[int] = [STEM, *widths]
        self.conv1, self.bn1 = _stem(in_channels)
        in_ch = STEM
        layers = []
        for width, n in zip(widths, units):
            layers.append(nn.Sequential(DownUnitV2(in_ch, width), *(BasicUnitV2(width) for _ in range(n))))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = _pointwise(in_ch, head_channels)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self.linear = nn.Linear(head_channels, num_classes)

    def head(self, last_stage: torch.Tensor) -> torch.Tensor:
        """The map that is pooled for the classifier: 1x1 conv-BN-ReLU to 1024 channels."""
        return F.relu(self.bn2(self.conv2(last_stage)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Return logits and the intermediate features that distillation methods consume."""
        return _run(self, x)


@register_model("shufflenetv1")
def _shufflenetv1(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto") -> ShuffleNetV1:
    """mdistiller's ``ShuffleV1``: groups 3, stages 240-480-960 with 4-8-4 units."""
    # image_size/stem are accepted so callers can pass them for every family; the 1x1 stem and adaptive
    # pooling already fit any input of at least 8 px, so they change nothing.
    return ShuffleNetV1(num_classes, in_channels)


@register_model("shufflenetv2")
def _shufflenetv2(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto") -> ShuffleNetV2:
    """mdistiller's ``ShuffleV2`` (net size 1): stages 116-232-464 with 3-7-3 basic units, head 1024."""
    # image_size/stem change nothing, as for shufflenetv1.
    return ShuffleNetV2(num_classes, in_channels)
