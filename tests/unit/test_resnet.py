"""ImageNet ResNets: torchvision state-dict compatibility, the Features contract for both stems, registry
options, and one training step of every method on teacher/student pairs of different widths."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from helpers.methods import batch_of, plain_pair_config, tiny_data
from oracle_kd.config import group_options
from oracle_kd.errors import ConfigError
from oracle_kd.methods import available_methods, build_distiller
from oracle_kd.models import available_models, build_model, model_options

NAMES = ["resnet18", "resnet34", "resnet50", "resnet101"]
N_BLOCKS = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet101": 33}
BASIC_CHANNELS = [64, 64, 128, 256, 512]
BOTTLENECK_CHANNELS = [64, 256, 512, 1024, 2048]
CHANNELS = {"resnet18": BASIC_CHANNELS, "resnet34": BASIC_CHANNELS,
            "resnet50": BOTTLENECK_CHANNELS, "resnet101": BOTTLENECK_CHANNELS}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN affine and running statistics, so eval-mode logits actually test the BN mapping."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5


# ----------------------------------------------------------------------------- torchvision compatibility
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_strictly_with_identical_logits(name: str) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None, num_classes=10)
    _randomize_bn(reference)
    model = build_model(name, 10, 3, image_size=224)  # auto stem → imagenet, torchvision's
    model.load_state_dict(reference.state_dict(), strict=True)
    reference.eval(), model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        logits, feats = model(x)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(model.fc(feats.pooled), expected)


@pytest.mark.parametrize("name,count", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                        ("resnet50", 25_557_032), ("resnet101", 44_549_160)])
def test_parameter_counts_and_shapes_match_torchvision(name: str, count: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_model(name, 1000, stem="imagenet")
        reference = getattr(torchvision.models, name)(weights=None)
    assert _n_params(model) == count
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_cifar_stem_differs_from_torchvision_only_in_conv1() -> None:
    with torch.device("meta"):
        small = build_model("resnet18", 10, 3, stem="cifar").state_dict()
        large = build_model("resnet18", 10, 3, stem="imagenet").state_dict()
    assert small.keys() == large.keys()
    assert [k for k in small if small[k].shape != large[k].shape] == ["conv1.weight"]
    assert small["conv1.weight"].shape == (64, 3, 3, 3)


def test_init_follows_torchvision() -> None:
    model = build_model("resnet18", 10, stem="imagenet")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
    # kaiming fan_out: std = sqrt(2 / (out_channels · k · k)) = sqrt(2 / (64·49)) for conv1
    assert model.conv1.weight.std().item() == pytest.approx((2 / (64 * 49)) ** 0.5, rel=0.05)


# ----------------------------------------------------------------------------- Features contract
@pytest.mark.parametrize("stem,sizes", [("imagenet", [16, 16, 8, 4, 2]), ("cifar", [64, 64, 32, 16, 8])])
@pytest.mark.parametrize("name", NAMES)
def test_features_contract(name: str, stem: str, sizes: list[int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, 3, stem=stem).eval()
    assert model.num_classes == 10 and model.stage_channels == CHANNELS[name]
    with torch.no_grad():
        logits, feats = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 10)
    assert len(feats.stages) == 5
    for t, c, s in zip(feats.stages, CHANNELS[name], sizes):
        assert t.shape == (1, c, s, s)
        assert (t >= 0).all()  # post-activation (the stem output is after ReLU and max-pool)
    assert len(feats.blocks) == N_BLOCKS[name]
    assert all((b >= 0).all() for b in feats.blocks)
    assert feats.blocks[-1] is feats.stages[-1]
    torch.testing.assert_close(feats.pooled, feats.stages[-1].mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_features_survive_backward(name: str) -> None:
    """Returned features must not be modified in place: autograd would raise, or values would drift."""
    model = build_model(name, 10, stem="imagenet")
    logits, feats = model(torch.randn(2, 3, 32, 32))
    tensors = feats.stages + feats.blocks
    snapshot = [t.detach().clone() for t in tensors]
    (logits.sum() + sum(t.sum() for t in tensors)).backward()
    for before, after in zip(snapshot, tensors):
        assert torch.equal(before, after)


@pytest.mark.parametrize("stem,size", [("imagenet", 32), ("cifar", 8)])
def test_smallest_inputs(stem: str, size: int) -> None:
    model = build_model("resnet18", 7, 1, stem=stem).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 1, size, size))
    assert logits.shape == (2, 7) and feats.stages[-1].shape[-1] == 1


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = build_model("resnet50", 10, stem="imagenet").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, _ = model(x)
        out, _ = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_autocast() -> None:
    model = build_model("resnet18", 10, stem="cifar")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 10) and torch.isfinite(logits.float()).all()
    assert feats.pooled.shape == (2, 512)


# ----------------------------------------------------------------------------- registry options
def test_registered_in_natural_order() -> None:
    names = available_models()
    assert set(NAMES) <= set(names)
    assert names.index("resnet14") < names.index("resnet18") < names.index("resnet20")
    assert names.index("resnet56") < names.index("resnet101") < names.index("resnet110")


@pytest.mark.parametrize("image_size,stem,expected", [
    (None, "auto", "imagenet"), (224, "auto", "imagenet"), (64, "auto", "cifar"), (32, "auto", "cifar"),
    (64, "imagenet", "imagenet"), (224, "cifar", "cifar"),
])
def test_stem_resolution(image_size: int | None, stem: str, expected: str) -> None:
    with torch.device("meta"):
        model = build_model("resnet18", 10, image_size=image_size, stem=stem)
    assert model.stem == expected
    assert model.conv1.kernel_size == ((7, 7) if expected == "imagenet" else (3, 3))


def test_cifar_resnets_accept_and_ignore_image_options() -> None:
    torch.manual_seed(0)
    plain = build_model("resnet8", 10)
    torch.manual_seed(0)
    with_options = build_model("resnet8", 10, 3, image_size=64, stem="cifar")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), with_options.state_dict().values()))
    assert model_options("resnet8") == model_options("resnet50") == ["image_size", "stem"]


@pytest.mark.parametrize("name,options,needle", [
    ("resnet18", {"width": 2}, "width"),
    ("resnet20", {"depth": 20}, "depth"),
    ("resnet18", {"stem": "tiny"}, "'tiny'"),
    ("resnet50", {"image_size": 0}, "image_size=0"),
    ("resnet50", {"image_size": "64"}, "image_size='64'"),
])
def test_bad_options_are_one_line_config_errors(name: str, options: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(name, 10, **options)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize("name", NAMES)
def test_teacher_and_student_options(name: str) -> None:
    for group in ("student", "teacher"):
        assert name in group_options(group)


# ----------------------------------------------------------------------------- every method
PAIRS = {  # (teacher, student, stem, input size): different widths (2048 vs 512) and both stems
    "34to18": ("resnet34", "resnet18", "imagenet", 64),
    "50to18": ("resnet50", "resnet18", "cifar", 32),
}


@pytest.fixture(scope="module")
def base_models() -> dict[str, tuple[nn.Module, nn.Module]]:
    """Built once per module (building ResNet50 costs more than a step); each test deep-copies."""
    torch.manual_seed(0)
    return {key: (build_model(t, 10, 3, stem=stem), build_model(s, 10, 3, stem=stem))
            for key, (t, s, stem, _) in PAIRS.items()}


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("method", available_methods())
def test_every_method_trains_one_step(method: str, pair: str, base_models) -> None:
    assert method in available_methods()
    size = PAIRS[pair][3]
    teacher, student = (copy.deepcopy(m) for m in base_models[pair])
    distiller = build_distiller(plain_pair_config(method), student, teacher, data=tiny_data((3, size, size), 10))
    distiller.train()
    optimizer = torch.optim.SGD(list(distiller.trainable_parameters()), lr=0.01)
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, size, size), torch.randint(0, 10, (4,))
    before = student.fc.weight.detach().clone()

    logits, losses = distiller.forward_train(batch_of(x, y), epoch=1)
    assert logits.shape == (4, 10)
    assert losses and all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()

    assert all(p.grad is None for p in teacher.parameters())
    assert not torch.equal(student.fc.weight, before)
