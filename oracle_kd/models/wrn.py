"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016) in the layout of RepDistiller/mdistiller: depth 6n+4,
widths 16-16k-32k-64k, pre-activation blocks, dropout 0 (the KD zoo never uses it).

Module names follow mdistiller (``conv1``, ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}``, the final
``bn1``, ``fc``) so its released checkpoints (e.g. the ``wrn_40_2`` CIFAR-100 teacher) load with ``strict=True``.

Features, at mdistiller's ``feats`` points:
  stages: [stem conv output (WRN has no BN-ReLU there), block1..3 outputs] -- all pre-activation residual sums,
          taken before the next block's (or the final) BN-ReLU, so they can be negative;
  blocks: every block's output (the last is stages[-1]);
  pooled: spatial mean of relu(bn1(stages[-1])), the final BN-ReLU applied -- NOT the mean of stages[-1];
  preact: per stage, the next BN's output on it (block2/block3's first bn1, then the final bn1), i.e. what the
          next ReLU receives. mdistiller computes these by calling those BNs a second time, which in train mode
          moves their running statistics twice per step; here each BN runs once and hands its output on.
Works for any input of at least 8 px (8x8 digits give 8-4-2 maps).

BN folding: none of the BNs follows a conv (each precedes one), so neither class sets ``bn_follows_conv``;
in particular the model's own ``conv1``/``bn1`` share a suffix but bn1 normalises block3's output.
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


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv twice. Where the width changes, the input's BN-ReLU is shared by the
    residual branch and a 1x1 ``convShortcut``; otherwise the raw input is the shortcut (as in mdistiller)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        # Projection decided by width alone, like the reference: every stage that strides also widens.
        self.convShortcut = None if in_planes == planes else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor, normed: torch.Tensor | None = None) -> torch.Tensor:
        """The block on x; `normed` is bn1(x) when the caller has computed it already (a stage's pre-ReLU map)."""
        # Out-of-place ops: x may be a tensor already handed out in Features.
        act = F.relu(self.bn1(x) if normed is None else normed)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class WideStage(nn.Module):
    """n blocks at one width; a module of its own only so the keys read ``blockK.layer.i`` as in checkpoints."""

    def __init__(self, n: int, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[WideBasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)




class WideResNet(nn.Module):
    """WRN-depth-k: a bare 3x3 stem conv, three pre-activation stages, then the shared BN-ReLU, pooling and fc."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.stage_channels: list[int] = widths

        self.conv1 = _conv3x3(in_channels, widths[0])
        self.block1 = WideStage(n, widths[0], widths[1], 1)
        self.block2 = WideStage(n, widths[1], widths[2], 2)
        self.block3 = WideStage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self, linear="zero_bias")  # mdistiller zeroes the fc bias only

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Return logits and the intermediate features that distillation methods consume."""
        out = self.conv1(x)
        stages, blocks, preact = [out], [], []
        for k, stage in enumerate((self.block1, self.block2, self.block3)):
            for i, block in enumerate(stage.layer):
                # A stage's pre-ReLU map is the next stage's first BN applied to it (mdistiller's preact_feats):
                # computed once here and handed to that block, so no BN runs twice.
                normed = block.bn1(out) if k > 0 and i == 0 else None
                if normed is not None:
                    preact.append(normed)
                out = block(out, normed)
                blocks.append(out)
            stages.append(out)
        preact.append(self.bn1(out))
        # Adaptive pooling equals mdistiller's fixed 8x8 average pool at 32 px and also serves smaller inputs.
        pooled = torch.flatten(F.adaptive_avg_pool2d(F.relu(preact[-1]), 1), 1)
        return self.fc(pooled), Features(stages=stages, blocks=blocks, pooled=pooled, preact=preact)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Per stage, the BN that turns its output into the next ReLU's input (OFD's margins)."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


def _register(name: str, depth: int, widen_factor: int) -> None:
    @register_model(name)
    def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto") -> WideResNet:
        # image_size/stem are accepted so callers can pass them for every family; the 3x3 stem and adaptive
        # pooling already fit any input of at least 8 px, so they change nothing.
        return WideResNet(depth, widen_factor, num_classes, in_channels)

    _factory.__name__ = name
    _factory.__doc__ = f"CIFAR {name}: depth {depth}, widen factor {widen_factor}, dropout 0."


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(f"wrn_{_depth}_{_k}", _depth, _k)
