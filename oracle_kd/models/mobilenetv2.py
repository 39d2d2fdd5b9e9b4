"""MobileNetV2 (Sandler et al. 2018) for CIFAR, as RepDistiller/mdistiller's ``mobile_half`` student.

Width 0.5, expansion 6, a stride-2 3x3 stem, seven groups of inverted residuals (linear bottlenecks) and a
1x1 conv to 1280 channels before the classifier. Module names follow mdistiller (``conv1.{0,1}``,
``blocks.{g}.{i}.conv.{0..7}``, ``conv2.{0,1}``, ``classifier.0``) so its checkpoints load with
``strict=True``. As in mdistiller, every unit has the 1x1 expansion conv, even at expansion 1 (group 0),
where torchvision's and the paper's skip it.

Features (mdistiller's ``feats``, same points):
  stages: stem after ReLU (16 ch, H/2); outputs of groups 1, 2, 4, 6 (12, 16, 48, 160 ch at H/2, H/4,
          H/8, H/16), which are linear-bottleneck outputs: no activation follows them.
  blocks: the output of each of the 17 inverted residuals; the last one is ``stages[-1]``.
  pooled: the global mean of the 1x1 head conv's output (1280 ch, after its BN-ReLU), the classifier's
          input; it is therefore not the mean of ``stages[-1]`` (see ``head``).
Runs on 32x32 and on 8x8 inputs (the map is then 1x1 from group 3 on).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.models.init import init_weights
from oracle_kd.models.registry import register_model

# (expansion, channels at width 1, units, stride of the first unit); expansion None = the model's T
SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
STAGE_GROUPS = (1, 2, 4, 6)
"""Groups whose output mdistiller returns as a feature map (after the stem): the ends of its resolution
levels, where RepDistiller put the hints."""


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # Not in place: the stem's output is handed out as a feature map.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise (stride here), 1x1 linear projection; identity shortcut where shapes match.

    The layers sit in one ``conv`` Sequential (keys ``conv.{0,1,3,4,6,7}``), so BN folding pairs them by order.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_shortcut = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_ch, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_shortcut else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2; adaptive pooling makes it work for any input of at least 8 px."""

    def __init__(self, num_classes: int, in_channels: int = 3, expansion: int = 6, width: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        in_ch = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, in_ch, 3, stride=2)
        self.stage_channels: list[int] = [in_ch]
        groups = []
        for g, (t, c, n, s) in enumerate(SETTINGS):
            out_ch = int(c * width)
            units = []
            for i in range(n):
                units.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, expansion if t is None else t))
                in_ch = out_ch
            groups.append(nn.Sequential(*units))
            if g in STAGE_GROUPS:
                self.stage_channels.append(out_ch)
        self.blocks = nn.ModuleList(groups)
        last = int(1280 * width) if width > 1.0 else 1280  # the head never narrows below 1280
        self.conv2 = _conv_bn_relu(in_ch, last, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_weights(self, linear="small")  # as mdistiller: classifier N(0, 0.01)


    def head(self, last_stage: torch.Tensor) -> torch.Tensor:
        """The map that is pooled for the classifier: 1x1 conv-BN-ReLU to 1280 channels."""
        return self.conv2(last_stage)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Return logits and the intermediate features that distillation methods consume."""
        out = self.conv1(x)
        stages, blocks = [out], []
        for g, group in enumerate(self.blocks):
            for unit in group:
                out = unit(out)
                blocks.append(out)
            if g in STAGE_GROUPS:
                stages.append(out)
        # mdistiller pools with AvgPool2d(2, ceil_mode=True) on the 2x2 map of a 32-px input: the global
        # mean, which adaptive pooling equals there and which also fits smaller inputs.
        pooled = torch.flatten(F.adaptive_avg_pool2d(self.head(out), 1), 1)
        return self.classifier(pooled), Features(stages=stages, blocks=blocks, pooled=pooled)


@register_model("mobilenetv2")
def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto") -> MobileNetV2:
    """mdistiller's ``mobile_half``: MobileNetV2, expansion 6, width 0.5."""
    # image_size/stem are accepted so callers can pass them for every family; the stride-2 stem and adaptive
    # pooling already fit any input of at least 8 px, so they change nothing.
    return MobileNetV2(num_classes, in_channels, expansion=6, width=0.5)
