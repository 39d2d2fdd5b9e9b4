"""Multilayer perceptrons on flattened inputs, plain and superfeature-explaining (KED's MLP version).

`mlp{W}`: d → W → W → classes with ReLU. `sfx4_mlp{W}`: the KED network over *input* superfeatures, a
partition of the d input features into M groups S_1..S_M found from an ordinary teacher (`core/superfeatures`;
the run declares it as an artefact below, and the engine makes it once per teacher): branch i is its own
d_i → w → w → classes MLP that sees only x[S_i], and the prediction is
z = Σ_i log_softmax(z^i) − (M−1)·log π, with π the ordinary teacher's mean prediction on the training set.
Because branch i reads only its own features, its output on a chimeric input (S_i taken from sample a_i) is
its output on a_i. The branch width w matches the plain `mlp{W}`'s parameter count, as the released code's
`solve` does.

The partition and log π are buffers, so a checkpoint carries them; a model built without them (probes,
tests) splits the features into M contiguous runs with a uniform prior, and a run always passes the real ones.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.core.needs import Needs, RunView, register_needs
from oracle_kd.core.superfeatures import superfeature_artefact
from oracle_kd.errors import ConfigError
from oracle_kd.models.registry import register_model
from oracle_kd.models.sfx import GROUPS, PLAIN_OF, combine_branches, matched_width

DEPTH = 2  # hidden layers, as in the released code's MLPs (784-500-500-10 teacher, 784-20-20-10 student)
WIDTHS = (16, 32, 64, 128, 256, 512)
INPUT_SUPERFEATURES: dict[str, int] = {}  # sfx MLP name -> its group count M (which runs need a partition)


def _stack(d: int, width: int, depth: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(d if i == 0 else width, width) for i in range(depth))


def _run(layers: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for layer in layers:
        x = F.relu(layer(x))
        outs.append(x)
    return outs


def _as_map(v: torch.Tensor) -> torch.Tensor:
    return v[:, :, None, None]  # (B, W) as a 1×1 map: the Features contract holds maps


class MLP(nn.Module):
    """d → width (×depth, ReLU) → classes. Features: stages = [input, hidden_1..hidden_depth] as 1×1 maps."""

    def __init__(self, d: int, num_classes: int, width: int, depth: int = DEPTH) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.hidden = _stack(d, width, depth)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        flat = x.flatten(1)
        hs = _run(self.hidden, flat)
        maps = [_as_map(h) for h in hs]
        return self.fc(hs[-1]), Features(stages=[_as_map(flat), *maps], blocks=maps, pooled=hs[-1])


def contiguous_partition(d: int, groups: int) -> list[list[int]]:
    """M runs of consecutive features, as equal as possible: what a model built without a partition uses."""
    bounds = [round(i * d / groups) for i in range(groups + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(groups)]


class SFXMLP(nn.Module):
    """M branch MLPs over the input superfeatures, combined over the prior (see the module docstring)."""

    def __init__(self, d: int, num_classes: int, plain_width: int, groups: int = GROUPS, depth: int = DEPTH,
                 partition: list[list[int]] | None = None, log_prior: list[float] | None = None,
                 branch_width: int = 0) -> None:
        super().__init__()
        partition = partition if partition is not None else contiguous_partition(d, groups)
        if len(partition) != groups or sorted(i for s in partition for i in s) != list(range(d)):
            raise ValueError(f"a partition of the {d} input features into {groups} groups is needed, got "
                             f"{len(partition)} groups over {sum(map(len, partition))} features")
        sizes = [len(s) for s in partition]
        if branch_width <= 0:
            target = sum(p.numel() for p in MLP(d, num_classes, plain_width, depth).parameters())
            branch_width = matched_width(lambda w: sum(p.numel() for s in sizes for p in
                                                       MLP(s, num_classes, w, depth).parameters()), target)
        self.num_classes, self.groups, self.branch_width, self.sizes = num_classes, groups, branch_width, sizes
        self.register_buffer("order", torch.tensor([i for s in partition for i in s], dtype=torch.long))
        prior = torch.zeros(num_classes) if log_prior is None else torch.tensor(log_prior, dtype=torch.float32)
        self.register_buffer("log_prior", prior)
        self.branches = nn.ModuleList(MLP(s, num_classes, branch_width, depth) for s in sizes)

    def partition(self) -> list[list[int]]:
        """The superfeatures S_1..S_M (as loaded: a checkpoint's buffer replaces the constructor's)."""
        return [part.tolist() for part in self.order.split(self.sizes)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        parts = x.flatten(1)[:, self.order].split(self.sizes, dim=1)
        outs = [branch(part) for branch, part in zip(self.branches, parts)]
        logits = [z for z, _ in outs]
        stages = [torch.cat([f.stages[k] for _, f in outs], dim=1) for k in range(len(outs[0][1].stages))]
        feats = Features(stages=stages, blocks=stages[1:], pooled=torch.cat([f.pooled for _, f in outs], dim=1),
                         branch_logits=logits, branch_maps=[f.stages[-1] for _, f in outs])
        return combine_branches(logits, self.log_prior), feats


def _register_plain(width: int) -> None:
    @register_model(f"mlp{width}")
    def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto") -> MLP:
        return MLP(in_channels * (image_size or 8) ** 2, num_classes, width)

    _factory.__doc__ = f"MLP: flattened input → {width} → {width} → classes (ReLU); image_size defaults to 8 (digits)."


def _register_sfx(width: int, groups: int) -> None:
    name = f"sfx{groups}_mlp{width}"
    INPUT_SUPERFEATURES[name], PLAIN_OF[name] = groups, f"mlp{width}"

    @register_model(name)
    def _factory(num_classes: int, in_channels: int, image_size: int | None = None, stem: str = "auto",
                 superfeatures: dict[str, Any] | None = None, branch_width: int = 0) -> SFXMLP:
        sf = superfeatures or {}
        return SFXMLP(in_channels * (image_size or 8) ** 2, num_classes, width, groups, DEPTH,
                      sf.get("partition"), sf.get("log_prior"), branch_width)

    _factory.__doc__ = f"KED MLP over {groups} input superfeatures, matched to mlp{width}'s parameters."


for _w in WIDTHS:
    _register_plain(_w)
    _register_sfx(_w, GROUPS)


@register_needs
def _input_superfeatures(view: RunView) -> Needs:
    """A run with an MLP over input superfeatures (as student, or as its teacher) needs the partition and prior
    of the ordinary teacher, with the models' M (teacher and student must agree)."""
    counts = {INPUT_SUPERFEATURES[a] for a in (view.student, view.teacher) if a in INPUT_SUPERFEATURES}
    if len(counts) > 1:
        raise ConfigError(f"teacher {view.teacher} and student {view.student} have different superfeature counts; "
                          f"pick models with the same M")
    return Needs([superfeature_artefact(counts.pop())]) if counts else Needs()

