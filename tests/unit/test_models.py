"""Model zoo: registry, CIFAR ResNet shapes and feature contract, and official checkpoint fit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from oracle_kd.errors import ConfigError
from oracle_kd.models import Features, available_models, build_model

FIXTURES = Path(__file__).resolve().parents[1] / "helpers"
# the Oracle KD release's CIFAR-100 checkpoints (file names below), when a copy is at hand
OFFICIAL = Path(os.environ.get("ORACLE_KD_OFFICIAL_CHECKPOINTS", "/nonexistent"))
EXPECTED_KEYS = json.loads((FIXTURES / "official_checkpoint_keys.json").read_text())

CIFAR_NAMES = [f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)] + ["resnet8x4", "resnet32x4"]


def _n_blocks(name: str) -> int:
    depth = int(name.removeprefix("resnet").removesuffix("x4"))
    return 3 * (depth - 2) // 6


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cifar_models_registered() -> None:
    assert set(CIFAR_NAMES) <= set(available_models())


@pytest.mark.parametrize("name", CIFAR_NAMES)
@pytest.mark.parametrize("num_classes,in_channels,size", [(10, 1, 8), (100, 3, 32)])
def test_shapes_and_features(name: str, num_classes: int, in_channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_channels)
    assert model.num_classes == num_classes
    logits, feats = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, num_classes)
    assert isinstance(feats, Features)

    assert len(feats.stages) == 4
    sizes = [size, size, size // 2, size // 4]
    for t, c, s in zip(feats.stages, model.stage_channels, sizes):
        assert t.shape == (2, c, s, s)
        assert (t >= 0).all()  # post-activation
    assert len(feats.blocks) == _n_blocks(name)
    assert feats.blocks[-1] is feats.stages[-1]
    assert feats.pooled.shape == (2, model.stage_channels[-1])
    torch.testing.assert_close(feats.pooled, feats.stages[-1].mean(dim=(2, 3)))


def test_block_counts() -> None:
    for name, n in [("resnet20", 9), ("resnet56", 27), ("resnet110", 54)]:
        _, feats = build_model(name, 10)(torch.randn(1, 3, 8, 8))
        assert len(feats.blocks) == n


def test_parameter_counts() -> None:
    assert _n_params(build_model("resnet20", 10, 3)) == 272_474
    assert _n_params(build_model("resnet56", 100, 3)) == 861_620
    assert _n_params(build_model("resnet32x4", 100, 3)) == 7_433_860
    assert _n_params(build_model("resnet8x4", 100, 3)) == 1_233_540


def test_unknown_model_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet21", 10)
    msg = str(info.value)
    assert "'resnet21'" in msg and "\n" not in msg
    assert all(name in msg for name in available_models())


def test_features_survive_backward() -> None:
    """Returned features must not be modified in place: autograd would raise, or values would drift."""
    model = build_model("resnet20", 10)
    logits, feats = model(torch.randn(2, 3, 16, 16))
    snapshot = [t.detach().clone() for t in feats.stages + feats.blocks]
    (logits.sum() + sum(t.sum() for t in feats.stages + feats.blocks)).backward()
    for before, after in zip(snapshot, feats.stages + feats.blocks):
        assert torch.equal(before, after)


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, _ = model(x)
        out, _ = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_autocast() -> None:
    model = build_model("resnet8", 10, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10) and torch.isfinite(logits.float()).all()
    assert feats.pooled.shape == (2, 64)


@pytest.mark.parametrize("arch", sorted(EXPECTED_KEYS))
def test_state_dict_matches_official_keys(arch: str) -> None:
    state = build_model(arch, 100, 3).state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == EXPECTED_KEYS[arch]


@pytest.mark.parametrize(
    "arch,filename",
    [
        ("resnet20", "resnet20_teacher.pth"),
        ("resnet32", "resnet32_teacher.pth"),
        ("resnet56", "resnet56_teacher.pth"),
        ("resnet20", "resnet56_to_resnet20_oracle_student.pth"),
    ],
)
def test_official_checkpoint_loads_strictly(arch: str, filename: str) -> None:
    path = OFFICIAL / filename
    if not path.is_file():
        pytest.skip(f"official checkpoint not available at {path} (set ORACLE_KD_OFFICIAL_CHECKPOINTS to a folder of them)")
    model = build_model(arch, 100, 3)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    with torch.no_grad():
        logits, _ = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 100) and torch.isfinite(logits).all()
