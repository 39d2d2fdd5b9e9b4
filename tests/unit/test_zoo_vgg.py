"""VGG-BN family: its stage and layer outputs and pooling schedule. Counts, layout and folding: test_zoo.py,
test_fold.py."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

import oracle_kd.models.vgg  # noqa: F401  (registers the family even before the package imports it)
from oracle_kd.models import Features, build_model

CONV_LAYERS = {"vgg8": 5, "vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}
NAMES = list(CONV_LAYERS)
CHANNELS = [64, 128, 256, 512, 512]


@cache
def _mdistiller_shaped(name: str) -> nn.Module:
    """One model per name at mdistiller's setting (100 classes, RGB), built once: construction dominates these tests.
    Users only read it, run it (train-mode BN statistics may move, which none of them checks) or copy it."""
    torch.manual_seed(0)
    return build_model(name, 100, 3)


def _group_sizes(size: int) -> list[int]:
    """Spatial size of groups 0..4: max-pools after groups 0-2 only, so the last two groups share a size."""
    return [size, size // 2, size // 4, size // 8, size // 8]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes,in_channels,size", [(10, 1, 8), (100, 3, 32)])
def test_features_contract(name: str, num_classes: int, in_channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = _mdistiller_shaped(name) if num_classes == 100 else build_model(name, num_classes, in_channels)
    assert model.num_classes == num_classes
    logits, feats = model(torch.randn(2, in_channels, size, size))
    assert isinstance(feats, Features)
    assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()

    assert len(feats.stages) == 5
    for t, c, s in zip(feats.stages, CHANNELS, _group_sizes(size)):
        assert t.shape == (2, c, s, s)
        assert (t >= 0).all()  # after the group's ReLU, as mdistiller's feats
    assert len(feats.blocks) == CONV_LAYERS[name]  # one per conv-BN-ReLU layer
    assert feats.blocks[-1] is feats.stages[-1]
    assert all((t >= 0).all() for t in feats.blocks)
    assert feats.pooled.shape == (2, 512)
    torch.testing.assert_close(feats.pooled, feats.stages[-1].mean(dim=(2, 3)))

    returned = feats.stages + feats.blocks + [feats.pooled]
    snapshot = [t.detach().clone() for t in returned]
    grads = torch.autograd.grad(logits.sum() + sum(t.mean() for t in feats.stages), list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)  # every parameter is reached (unused ones would raise)
    for before, after in zip(snapshot, returned):
        assert torch.equal(before, after)  # nothing handed out was modified in place


@pytest.mark.parametrize("size,expected", [(64, [64, 32, 16, 8, 4]), (4, [4, 2, 1, 1, 1])])
def test_pooling_schedule_off_cifar_sizes(size: int, expected: list[int]) -> None:
    """64 px also pools after group 3 (mdistiller's Tiny-ImageNet rule); below 8 px a 1 px map is not pooled."""
    _, feats = build_model("vgg8", 10, 3)(torch.randn(2, 3, size, size))
    assert [t.shape[-1] for t in feats.stages] == expected
