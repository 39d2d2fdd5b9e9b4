"""VGG with BatchNorm for CIFAR (Simonyan & Zisserman 2015, in the RepDistiller/mdistiller form used as KD teacher).

Five conv groups ``block0..4`` of 3x3 conv (with bias) + BN + ReLU layers, a 2x2 max-pool after groups 0-2, then
global average pooling and one linear ``classifier``. Module names and nn.Sequential indices follow mdistiller, so
its released checkpoints load with ``strict=True``: layer i of a group has its conv at index 3i and its BN at 3i+1;
the parameter-free ReLU modules only keep those indices, and the group's last ReLU is left out (forward applies it).

Features (mdistiller's ``feats`` points):
- stages: the output of each group 0..4 after its final ReLU (5 tensors; AT reads stages[1:], FitNet stages[2]).
- blocks: every conv-BN-ReLU layer's output after its ReLU, in order; the last one is stages[-1].
- pooled: stages[-1] averaged over space, the classifier's input.
- preact: groups 1..4's last BN output, before its ReLU.

Resolution: groups run at 32, 16, 8, 4, 4 px on 32x32 inputs and at 8, 4, 2, 1, 1 px on 8x8 inputs, so 8x8 digits
need no change. A 64 px input (Tiny-ImageNet) also gets the pool after group 3, exactly as mdistiller decides it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.models.init import init_weights
from oracle_kd.models.registry import register_model

Widths = tuple[tuple[int, ...], ...]

# Conv widths per group; mdistiller's configurations S, A, B, D, E.
VGG_WIDTHS: dict[str, Widths] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class ConvGroup(nn.Sequential):
    """One VGG group laid out as [conv, BN, ReLU] * n without the last ReLU, so state_dict keys match mdistiller's
    and BN folding pairs each conv with the BN after it (nn.Sequential order)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            in_channels = width
        super().__init__(*layers[:-1])

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's post-ReLU output, the group's last one included; out-of-place ReLU because each is
        handed to distillation losses."""
        return self.outputs_and_preact(x)[0]

    def outputs_and_preact(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """`layer_outputs` and the group's last BN output, before its ReLU."""
        outs = []
        for i in range(0, len(self), 3):
            pre = self[i + 1](self[i](x))
            x = F.relu(pre)
            outs.append(x)
        return outs, pre


def _halve(x: torch.Tensor) -> torch.Tensor:
    # A 1 px map is left as is rather than pooled to nothing; at 8 px and above no pool ever sees one.
    return F.max_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x




class CifarVGG(nn.Module):
    """VGG-BN for small images; global average pooling makes the classifier independent of the input size."""

    def __init__(self, widths: Widths, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"CIFAR VGG has 5 conv groups, got {len(widths)}")
        self.num_classes = num_classes
        self.stage_channels: list[int] = [w[-1] for w in widths]
        groups, in_planes = [], in_channels
        for group_widths in widths:
            groups.append(ConvGroup(in_planes, group_widths))
            in_planes = group_widths[-1]
        self.block0, self.block1, self.block2, self.block3, self.block4 = groups
        self.classifier = nn.Linear(in_planes, num_classes)
        init_weights(self, linear="small")  # mdistiller: classifier N(0, 0.01)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """Return logits and the intermediate features that distillation methods consume."""
        # mdistiller pools after group 3 only for 64 px inputs (its Tiny-ImageNet setting); CIFAR keeps 4x4 there.
        pool_after = (True, True, True, x.shape[2] == 64, False)
        stages, blocks, preact = [], [], []
        out = x
        for group, pool in zip((self.block0, self.block1, self.block2, self.block3, self.block4), pool_after):
            layers, pre = group.outputs_and_preact(out)
            blocks += layers
            stages.append(layers[-1])
            preact.append(pre)
            out = _halve(layers[-1]) if pool else layers[-1]
        pooled = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(pooled), Features(stages=stages, blocks=blocks, pooled=pooled, preact=preact[1:])

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Per stage after the stem group, its last BN, which its last ReLU reads (OFD's margins)."""
        return [group[-1] for group in (self.block1, self.block2, self.block3, self.block4)]


def _register(name: str, widths: Widths) -> None:
    @register_model(name)
    def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto") -> CifarVGG:
        # image_size/stem are accepted so callers can pass them for every family; they change nothing here:
        # the 3x3 convs and global average pooling fit any input, and the pooling schedule follows the input itself.
        return CifarVGG(widths, num_classes, in_channels)

    _factory.__name__ = name
    _factory.__doc__ = f"CIFAR {name} with BatchNorm: conv widths per group {widths}."


for _name, _widths in VGG_WIDTHS.items():
    _register(_name, _widths)
