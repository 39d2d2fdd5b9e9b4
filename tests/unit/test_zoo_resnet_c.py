"""mdistiller's CIFAR-stem ResNets (resnet18c, resnet50c): apart from the torchvision-layout resnet18/50, and their
Features at 32 and 8 px. Counts, layout and folding: test_zoo.py, test_fold.py."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from oracle_kd.models import Features, available_models, build_model
from oracle_kd.models import resnet_c as _resnet_c  # noqa: F401  (registers resnet18c/resnet50c)

NAMES = ["resnet18c", "resnet50c"]
CHANNELS = {"resnet18c": [64, 64, 128, 256, 512], "resnet50c": [64, 256, 512, 1024, 2048]}
N_BLOCKS = {"resnet18c": 8, "resnet50c": 16}



@functools.cache
def _prototype(name: str) -> nn.Module:
    """One freshly initialised model per name at mdistiller's setting (100 classes, RGB); tests that change
    it take a deepcopy, which is much cheaper than a second kaiming init."""
    torch.manual_seed(0)
    return build_model(name, 100, 3)


def test_registered_apart_from_the_torchvision_layout() -> None:
    assert set(NAMES) <= set(available_models())
    ours, torchvision_layout = _prototype("resnet18c").state_dict(), build_model("resnet18", 100, 3).state_dict()
    assert "linear.weight" in ours and "fc.weight" not in ours and "fc.weight" in torchvision_layout


def _check_features(name: str, logits: torch.Tensor, feats: Features, classes: int, size: int) -> None:
    assert isinstance(feats, Features)
    assert logits.shape == (2, classes) and torch.isfinite(logits).all()
    sizes = [size, size, size // 2, size // 4, size // 8]
    assert [tuple(t.shape) for t in feats.stages] == [(2, c, s, s) for c, s in zip(CHANNELS[name], sizes)]
    assert all((t >= 0).all() for t in feats.stages + feats.blocks)  # stem and blocks after their ReLU
    assert len(feats.blocks) == N_BLOCKS[name]
    assert feats.blocks[-1] is feats.stages[-1]
    assert feats.pooled.shape == (2, CHANNELS[name][-1])
    torch.testing.assert_close(feats.pooled, feats.stages[-1].mean(dim=(2, 3)))


@pytest.mark.parametrize("name", NAMES)
def test_features_contract_at_32px(name: str) -> None:
    model = _prototype(name)
    assert model.num_classes == 100
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 3, 32, 32))
    _check_features(name, logits, feats, 100, 32)


@pytest.mark.parametrize("name", NAMES)
def test_features_contract_and_backward_at_8px_grayscale(name: str) -> None:
    """scikit-learn digits: 1 channel, 8x8; adaptive pooling takes layer4's 1x1 map."""
    torch.manual_seed(0)
    model = build_model(name, 10, 1)
    assert model.num_classes == 10
    logits, feats = model(torch.randn(2, 1, 8, 8))
    _check_features(name, logits, feats, 10, 8)

    snapshot = [t.detach().clone() for t in feats.stages + feats.blocks]
    (logits.sum() + sum(t.mean() for t in feats.stages)).backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, feats.stages + feats.blocks))  # nothing in place


def test_image_size_and_stem_change_nothing() -> None:
    model = build_model("resnet18c", 10, 3, image_size=224, stem="imagenet")
    assert model.conv1.weight.shape == (64, 3, 3, 3) and not hasattr(model, "maxpool")
