"""Wide ResNets: their pre-activation stage points, pooled after the shared BN-ReLU, and where a block projects its
shortcut. Counts, layout and folding: test_zoo.py, test_fold.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oracle_kd.core.features import Features
from oracle_kd.models.registry import build_model

NAMES = ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


def _blocks_per_stage(name: str) -> int:
    return (int(name.split("_")[1]) - 4) // 6


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes,in_channels,size", [(100, 3, 32), (10, 1, 8)])
def test_features_contract(name: str, num_classes: int, in_channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_channels)
    assert model.num_classes == num_classes
    logits, feats = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()
    assert isinstance(feats, Features)

    sizes = [size, size, size // 2, size // 4]
    assert [tuple(t.shape) for t in feats.stages] == [(2, c, s, s) for c, s in zip(model.stage_channels, sizes)]
    assert len(feats.blocks) == 3 * _blocks_per_stage(name)
    assert feats.blocks[-1] is feats.stages[-1]
    # stages are pre-activation (mdistiller's feats); pooled is taken after the final shared BN-ReLU
    assert feats.pooled.shape == (2, model.stage_channels[-1])
    torch.testing.assert_close(feats.pooled, torch.relu(model.bn1(feats.stages[-1])).mean(dim=(2, 3)))

    handed_out = feats.stages + feats.blocks + [feats.pooled]
    snapshot = [t.detach().clone() for t in handed_out]
    (logits.sum() + sum(t.mean() for t in feats.stages)).backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, handed_out))  # nothing modified in place


def test_shortcut_projection_only_where_width_changes() -> None:
    """As in mdistiller: wrn_*_1 keeps 16 channels through block1, so its first block has no convShortcut."""
    assert build_model("wrn_16_1", 100, 3).block1.layer[0].convShortcut is None
    assert isinstance(build_model("wrn_16_2", 100, 3).block1.layer[0].convShortcut, nn.Conv2d)
