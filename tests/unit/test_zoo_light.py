"""Light CIFAR students from mdistiller: MobileNetV2 (mobile_half), ShuffleNet V1 and V2 — their stage shapes and
the 1x1 head between the last stage and the pooled vector. Counts, layout and folding: test_zoo.py, test_fold.py."""

from __future__ import annotations

import pytest
import torch

import oracle_kd.models.mobilenetv2  # noqa: F401  (registers mobilenetv2)
import oracle_kd.models.shufflenet  # noqa: F401  (registers shufflenetv1/v2)
from oracle_kd.models import Features, build_model

NAMES = ["mobilenetv2", "shufflenetv1", "shufflenetv2"]

# (channels, downsampling factor) of each stage entry, the pooled width, and the number of blocks
STAGES = {
    "mobilenetv2": ([(16, 2), (12, 2), (16, 4), (48, 8), (160, 16)], 1280, 17),
    "shufflenetv1": ([(24, 1), (240, 2), (480, 4), (960, 8)], 960, 16),
    "shufflenetv2": ([(24, 1), (116, 2), (232, 4), (464, 8)], 1024, 16),
}
# stage entries that follow a ReLU (MobileNetV2's later stages are linear-bottleneck outputs)
POST_RELU = {"mobilenetv2": 1, "shufflenetv1": 4, "shufflenetv2": 4}



@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes,in_channels,size", [(100, 3, 32), (10, 1, 8)])
def test_features_contract(name: str, num_classes: int, in_channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_channels, image_size=size)
    assert model.num_classes == num_classes
    logits, feats = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()
    assert isinstance(feats, Features)

    stages, pooled_width, n_blocks = STAGES[name]
    assert [tuple(t.shape) for t in feats.stages] == [(2, c, -(-size // f), -(-size // f)) for c, f in stages]
    assert model.stage_channels == [c for c, _ in stages]
    assert all((t >= 0).all() for t in feats.stages[: POST_RELU[name]])
    assert len(feats.blocks) == n_blocks
    assert feats.blocks[-1] is feats.stages[-1]
    assert feats.pooled.shape == (2, pooled_width)
    with torch.no_grad():  # pooled is the mean of the map the classifier sees (stages[-1] or a 1x1 head on it)
        torch.testing.assert_close(feats.pooled, model.head(feats.stages[-1]).mean(dim=(2, 3)))

    snapshot = [t.detach().clone() for t in feats.stages + feats.blocks]
    (logits.sum() + sum(t.mean() for t in feats.stages)).backward()
    assert all(p.grad is not None for p in model.parameters())
    for before, after in zip(snapshot, feats.stages + feats.blocks):
        assert torch.equal(before, after)  # nothing handed out was overwritten in place
