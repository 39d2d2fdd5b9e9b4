"""The feature contract every model returns next to its logits.

Distillation methods read intermediate features only through this record, so no method depends on
a model's module names or on positional magic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Features:
    """Intermediate activations of one forward pass.

    stages: post-activation output of the stem, then of each stage (CIFAR ResNet: 4 tensors).
    blocks: output of every residual block, in order (used by SAD).
    pooled: globally average-pooled last feature map, shape (B, C), the fc layer's input.
    """

    stages: list[torch.Tensor] = field(default_factory=list)
    blocks: list[torch.Tensor] = field(default_factory=list)
    pooled: torch.Tensor | None = None
