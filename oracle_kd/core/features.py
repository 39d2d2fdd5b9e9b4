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

    stages: output of the stem, then of each stage, at the points mdistiller returns as `feats` (CIFAR ResNet:
        4 tensors after ReLU; WRN's are pre-activation sums; ARCHITECTURE.md has each family's).
    blocks: output of every block, in order (used by SAD); the last is the last stage's output.
    pooled: (B, C), the classifier's input: the global average of the last map the classifier sees (the last
        stage, or a final BN-ReLU / 1x1 head applied to it).
    preact: one map per stage after the stem, the value that stage's last ReLU receives (mdistiller's
        `preact_feats[1:]`, which OFD distils); empty for a family whose stages end in no ReLU (MobileNetV2's
        linear bottlenecks, the MLPs, the superfeature models).
    branch_logits, branch_maps: superfeature-explaining models only (`sfx*`, KED): each superfeature branch's
        own logits z^i (B, classes) and its last map before pooling; empty for every other model.
    """

    stages: list[torch.Tensor] = field(default_factory=list)
    blocks: list[torch.Tensor] = field(default_factory=list)
    pooled: torch.Tensor | None = None
    branch_logits: list[torch.Tensor] = field(default_factory=list)
    branch_maps: list[torch.Tensor] = field(default_factory=list)
    preact: list[torch.Tensor] = field(default_factory=list)

    def detach(self) -> "Features":
        """The same activations cut from the graph (a teacher pass taken with gradients on, handed on as the
        plain no-grad pass)."""
        return Features([t.detach() for t in self.stages], [t.detach() for t in self.blocks],
                        self.pooled.detach() if self.pooled is not None else None,
                        [t.detach() for t in self.branch_logits], [t.detach() for t in self.branch_maps],
                        [t.detach() for t in self.preact])
