"""FitNet and SAD: each loss against an independent computation from the formulas, mismatched models, the
shape probe leaving both models untouched, one optimizer step, and a tiny run through the command line."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from oracle_kd.cli import main
from oracle_kd.config import CONF_DIR
from oracle_kd.core.batch import Batch
from oracle_kd.core.features import Features
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller, kd_loss
from oracle_kd.methods.fitnet import FitNetConfig
from oracle_kd.methods.sad import LayerAttention, SADConfig
from oracle_kd.models import build_model

PAIRS = [("resnet110", "resnet20"), ("resnet32x4", "resnet8x4")]
CIFAR = (3, 32, 32)


class ShapeNet(nn.Module):
    """conv → BN → ReLU resized to a chosen H×W: a model whose hint map has exactly the shape a test needs."""

    def __init__(self, channels: int, size: int, num_classes: int = 5, in_channels: int = 1) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        f = F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), self.size)
        pooled = f.mean(dim=(2, 3))
        return self.fc(pooled), Features(stages=[f, f, f, f], blocks=[f], pooled=pooled)


def pair(teacher: str, student: str, num_classes: int = 100, in_channels: int = 3) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return build_model(teacher, num_classes, in_channels), build_model(student, num_classes, in_channels)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in after.items():  # BN running statistics and num_batches_tracked included
        assert torch.equal(v, before[k]), k


# ----------------------------------------------------------------------------- FitNet
def independent_hint(s_map: torch.Tensor, conv: nn.Module, bn: nn.BatchNorm2d, transposed: bool,
                     stride: int, padding: int) -> torch.Tensor:
    """conv (geometry given by the test, weights from the module) → BN with batch statistics → ReLU."""
    op = F.conv_transpose2d if transposed else F.conv2d
    z = op(s_map, conv.weight, conv.bias, stride=stride, padding=padding)
    mean = z.mean(dim=(0, 2, 3), keepdim=True)
    var = z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    z = (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return torch.clamp(z, min=0)


@pytest.mark.parametrize("s_size, t_size, transposed, kernel, stride, padding", [
    (16, 8, False, 3, 2, 1),   # student twice the teacher's size: 3x3 stride-2 conv
    (4, 8, True, 4, 2, 1),     # half: 4x4 stride-2 transposed conv
    (8, 8, False, 1, 1, 0),    # equal: 1x1 conv
    (11, 8, False, 4, 1, 0),   # other larger size: valid conv of kernel 1 + s - t
])
def test_fitnet_regressor_kinds_and_loss(s_size, t_size, transposed, kernel, stride, padding):
    torch.manual_seed(0)
    teacher, student = ShapeNet(10, t_size), ShapeNet(6, s_size)
    d = build_distiller(FitNetConfig(), student, teacher, (1, 8, 8)).train()
    conv = d.regressor[0]
    assert isinstance(conv, nn.ConvTranspose2d) is transposed
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride)
    assert conv.padding == (padding, padding) and (conv.in_channels, conv.out_channels) == (6, 10)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    logits, losses = d.forward_train(Batch(x, y), epoch=1)
    assert set(losses) == {"ce", "hint"}
    with torch.no_grad():
        t_map = teacher(x)[1].stages[2]
    hint = independent_hint(student(x)[1].stages[2], conv, d.regressor[1], transposed, stride, padding)
    assert hint.shape == t_map.shape == (6, 10, t_size, t_size)
    torch.testing.assert_close(losses["hint"], 100.0 * ((hint - t_map) ** 2).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["ce"], F.cross_entropy(logits, y))


def test_fitnet_rejects_maps_no_regressor_fits():
    with pytest.raises(ConfigError, match="method.hint_stage"):
        build_distiller(FitNetConfig(), ShapeNet(6, 6), ShapeNet(10, 8), (1, 8, 8))
    with pytest.raises(ConfigError, match="method.hint_stage=4 must be < 4"):
        build_distiller(FitNetConfig(hint_stage=4), ShapeNet(6, 8), ShapeNet(10, 8), (1, 8, 8))


@pytest.fixture(scope="module", params=PAIRS, ids=lambda p: "->".join(p))
def cifar_pair(request) -> dict:
    """A deep/wide teacher and a shallower student on 32x32, with the teacher's output on a fixed batch
    (computed once: the teacher is frozen, so every method's forward sees exactly these)."""
    teacher, student = pair(*request.param)
    teacher.eval()
    x, y = torch.randn(2, *CIFAR), torch.randint(0, 100, (2,))
    with torch.no_grad():
        t_logits, t_feats = teacher(x)
    return {"arch": request.param, "teacher": teacher, "student": student, "x": x, "y": y,
            "t_logits": t_logits, "t_feats": t_feats}


def build_checking_probe(cfg, p: dict):
    """Build the method, checking that its shape probe left teacher and student bit-identical."""
    p["student"].train()
    before_t, before_s = snapshot(p["teacher"]), snapshot(p["student"])
    d = build_distiller(cfg, p["student"], p["teacher"], CIFAR)
    assert_unchanged(p["teacher"], before_t)
    assert_unchanged(p["student"], before_s)
    assert p["student"].training  # the probe restores the student's mode
    return d.train()


def test_fitnet_on_mismatched_resnets(cifar_pair):
    p = cifar_pair
    d = build_checking_probe(FitNetConfig(), p)
    _, losses = d.forward_train(Batch(p["x"], p["y"]), epoch=1)
    # layer2 is 16x16 for every CIFAR ResNet, so a 1x1 conv bridges the two
    hint = independent_hint(p["student"](p["x"])[1].stages[2], d.regressor[0], d.regressor[1], False, 1, 0)
    expected = 100.0 * ((hint - p["t_feats"].stages[2]) ** 2).mean()
    torch.testing.assert_close(losses["hint"], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- SAD
def independent_sad(attn, s_layers: list[torch.Tensor], t_layers: list[torch.Tensor]) -> torch.Tensor:
    """The SAD formula with explicit loops; only the query/key projections are the method's modules."""
    q = attn.queries([f.mean(dim=(2, 3)) for f in t_layers])  # (B, T, d)
    k = attn.keys([f.mean(dim=(2, 3)) for f in s_layers])     # (B, S, T, d)
    d = q.shape[-1]
    total = torch.zeros(())
    for t, f_t in enumerate(t_layers):
        logit = torch.stack([(k[:, s, t] * q[:, t]).sum(dim=1) + (attn.p_t[t] * attn.p_s[s]).sum()
                             for s in range(len(s_layers))], dim=1) / math.sqrt(d)  # (B, S)
        z = torch.exp(logit - logit.max(dim=1, keepdim=True).values)
        att = z / z.sum(dim=1, keepdim=True)
        v_t = f_t.pow(2).mean(dim=1).flatten(1)
        v_t = v_t / v_t.norm(dim=1, keepdim=True)
        per_sample = torch.zeros(f_t.shape[0])
        for s, f_s in enumerate(s_layers):
            e = F.adaptive_avg_pool2d(f_s.pow(2).mean(dim=1, keepdim=True), f_t.shape[-2:]).flatten(1)
            v_s = e / e.norm(dim=1, keepdim=True)
            per_sample = per_sample + att[:, s] * ((v_s - v_t) ** 2).mean(dim=1)
        total = total + per_sample.mean()
    return total


def test_sad_loss_matches_independent_computation(cifar_pair):
    p = cifar_pair
    cfg = SADConfig(ce_weight=0.7, alpha=0.9, temperature=4.0, beta=200.0, dim=16)
    d = build_checking_probe(cfg, p)
    logits, losses = d.forward_train(Batch(p["x"], p["y"]), epoch=1)
    assert set(losses) == {"ce", "kd", "sad"}

    s_logits, s_feats = p["student"](p["x"])
    # resnet110 (54 blocks) uses every second block, starting at the second; others use them all
    t_blocks = p["t_feats"].blocks
    t_layers = t_blocks[1::2] if p["arch"][0] == "resnet110" else t_blocks
    assert len(d.attention.query) == len(t_layers) and len(d.attention.key) == len(s_feats.blocks)
    torch.testing.assert_close(losses["sad"], 200.0 * independent_sad(d.attention, s_feats.blocks, t_layers),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["ce"], 0.7 * F.cross_entropy(s_logits, p["y"]))
    torch.testing.assert_close(losses["kd"], 0.9 * kd_loss(s_logits, p["t_logits"], 4.0))
    torch.testing.assert_close(logits, s_logits)


def test_sad_is_fp32_under_autocast():
    teacher, student = pair("resnet8", "resnet8", 10, 1)
    d = build_distiller(SADConfig(dim=8), student, teacher, (1, 8, 8)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = d.forward_train(Batch(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))), epoch=1)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    # the attention itself ignores autocast: bf16 features give exactly the fp32 result (two student
    # layers, so the softmax is not trivially 1 and bf16 projections would show)
    s_layers = [torch.randn(4, 16, 8, 8).bfloat16(), torch.randn(4, 24, 4, 4).bfloat16()]
    t_layers = [torch.randn(4, 16, 8, 8).bfloat16(), torch.randn(4, 32, 4, 4).bfloat16()]
    attn = LayerAttention([16, 24], [16, 32], dim=8).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn(s_layers, t_layers)
    want = attn([f.float() for f in s_layers], [f.float() for f in t_layers])
    assert got.dtype == torch.float32 and torch.equal(got, want)


# ----------------------------------------------------------------------------- both methods
def extras_expected(method: str, d) -> int:
    """Parameter count of the method's extras from the layer shapes alone."""
    if method == "fitnet":
        conv = d.regressor[0]
        c_s, c_t = conv.in_channels, conv.out_channels
        return c_s * c_t * math.prod(conv.kernel_size) + c_t + 2 * c_t  # conv weight + bias, BN affine
    a, dim = d.attention, d.attention.dim
    c_t = [q[0].in_features for q in a.query]
    c_s = [k[0][0].in_features for k in a.key]
    n_t, n_s = len(c_t), len(c_s)
    linear_bn = lambda n_in, n_out: n_in * n_out + n_out + 2 * n_out
    return (sum(linear_bn(c, dim) for c in c_t) + sum(linear_bn(c, dim) for c in c_s)
            + linear_bn(dim, dim * n_t) + (n_t + n_s) * dim)


def build(method: str, student: nn.Module, teacher: nn.Module, input_shape: tuple[int, ...]):
    cfg = FitNetConfig() if method == "fitnet" else SADConfig(dim=32)
    return build_distiller(cfg, student, teacher, input_shape)


@pytest.mark.parametrize("method", ["fitnet", "sad"])
def test_one_optimizer_step_trains_student_and_extras_only(method):
    teacher, student = pair("resnet14", "resnet8", 10, 1)
    d = build(method, student, teacher, (1, 8, 8))
    before_t, before_s = snapshot(teacher), snapshot(student)
    extras = [p for n, p in d.named_parameters() if not n.startswith(("student.", "teacher."))]
    extras_before = [p.detach().clone() for p in extras]
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1, momentum=0.9)
    d.train()
    _, losses = d.forward_train(Batch(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))), epoch=1)
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()

    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.training is False
    assert_unchanged(teacher, before_t)
    assert any(not torch.equal(v, before_s[k]) for k, v in student.state_dict().items())
    assert all(p.grad is not None for p in extras)
    assert any(not torch.equal(p, b) for p, b in zip(extras, extras_before))
    assert d.extra_parameter_count() == extras_expected(method, d) > 0
    assert d.extra_parameter_count() == sum(p.numel() for p in extras)
    assert not any(k.startswith("teacher.") for k in d.trainable_state_dict())


@pytest.mark.parametrize("method, cls", [("fitnet", FitNetConfig), ("sad", SADConfig)])
def test_yaml_matches_config_defaults_and_bad_values_fail(method, cls):
    yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml"))
    assert yaml.pop("defaults") == [f"_{method}_schema", "_self_"]
    defaults = dataclasses.asdict(cls())
    assert {k: defaults[k] for k in yaml} == yaml  # every yaml value is the dataclass default ...
    own = {f.name for f in dataclasses.fields(cls)} - {f.name for f in dataclasses.fields(cls.__mro__[1])}
    assert own <= set(yaml)  # ... and the yaml shows every option the method adds
    bad = {"fitnet": {"weight": -1.0}, "sad": {"beta": -1.0}}[method]
    with pytest.raises(ConfigError, match="must be >= 0"):
        cls(**bad).validate()


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """An untrained resnet8 as a checkpoint file: the run then skips training an auto teacher (tested in
    test_runner), which would double this test's time; the method's path through the runner is the same."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.save(build_model("resnet8", 10, 1).state_dict(), path)
    return path


@pytest.mark.parametrize("method, term", [("fitnet", "train_hint"), ("sad", "train_sad")])
def test_tiny_run_end_to_end(tmp_path, teacher_file, method, term):
    argv = [f"store={tmp_path}/runs", "dataset=digits", "teacher=resnet8", f"teacher.checkpoint={teacher_file}",
            "student=resnet8", f"method={method}", "train=quick", "train.epochs=1", "progress=false", "hardware=cpu"]
    assert main(argv) == 0
    (path,) = (tmp_path / "runs").rglob("result.json")
    result = json.loads(path.read_text())
    assert result["method"] == method and result["extra_params"] > 0
    folder = Path(result["folder"])
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert term in rows[0] and math.isfinite(rows[0][term])
    model = build_model("resnet8", 10, 1)
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True), strict=True)
