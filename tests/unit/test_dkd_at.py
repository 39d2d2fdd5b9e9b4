"""DKD and AT: each loss against an independent computation written from the formulas, plus the
Distiller contract (frozen teacher) and one tiny end-to-end run per method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from oracle_kd.cli import compose, main
from oracle_kd.core.batch import Batch
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller, kd_loss
from oracle_kd.methods.at import ATConfig, at_loss
from oracle_kd.methods.dkd import DKDConfig, dkd_terms
from oracle_kd.models import build_model

# ---------------------------------------------------------------- DKD

def _reference_dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mdistiller's dkd_loss written out: probabilities, masks, torch.log, target masked by −1000."""
    b = s.shape[0]
    gt = torch.zeros_like(s)
    gt[torch.arange(b), y] = 1.0
    p_s, p_t = torch.softmax(s / tau, dim=1), torch.softmax(t / tau, dim=1)
    bin_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)
    bin_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(bin_s), bin_t, reduction="sum") * tau**2 / b
    nckd = F.kl_div(torch.log_softmax(s / tau - 1000.0 * gt, dim=1), torch.softmax(t / tau - 1000.0 * gt, dim=1),
                    reduction="sum") * tau**2 / b
    return tckd, nckd


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_terms_match_the_reference(tau):
    torch.manual_seed(0)
    s, t = 3 * torch.randn(8, 10), 3 * torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    tckd, nckd = dkd_terms(s, t, y, tau)
    ref_tckd, ref_nckd = _reference_dkd(s.double(), t.double(), y, tau)
    torch.testing.assert_close(tckd.double(), ref_tckd, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(nckd.double(), ref_nckd, rtol=1e-5, atol=1e-7)
    assert tckd.dtype == nckd.dtype == torch.float32


def test_dkd_decomposes_kd_per_sample():
    # the paper's identity: KD = TCKD + (1 − p_target^teacher) · NCKD, sample by sample
    torch.manual_seed(1)
    s, t, y, tau = torch.randn(5, 7), torch.randn(5, 7), torch.randint(0, 7, (5,)), 2.0
    for i in range(5):
        tckd, nckd = dkd_terms(s[i:i + 1], t[i:i + 1], y[i:i + 1], tau)
        p_target = torch.softmax(t[i] / tau, dim=0)[y[i]]
        torch.testing.assert_close(kd_loss(s[i:i + 1], t[i:i + 1], tau), tckd + (1 - p_target) * nckd,
                                   rtol=1e-5, atol=1e-6)


def test_dkd_terms_are_fp32_for_bf16_logits():
    s, t, y = torch.randn(4, 10).bfloat16(), torch.randn(4, 10).bfloat16(), torch.randint(0, 10, (4,))
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    assert tckd.dtype == nckd.dtype == torch.float32
    torch.testing.assert_close((tckd, nckd), dkd_terms(s.float(), t.float(), y, 4.0))


def _confident_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    torch.manual_seed(2)
    y = torch.randint(0, 10, (6,))
    onehot = F.one_hot(y, 10).float()
    wrong = F.one_hot((y + 1) % 10, 10).float()
    gap = torch.randn(6, 10) + 1e4 * onehot
    return [
        ("teacher gap 1e4", torch.randn(6, 10), gap, y),
        ("one-hot teacher", torch.randn(6, 10), 1e4 * onehot, y),
        ("one-hot teacher and student", 1e4 * onehot, 1e4 * onehot, y),
        ("teacher sure of a wrong class", 1e4 * onehot, 1e4 * wrong, y),
    ]


@pytest.mark.parametrize("case", _confident_cases(), ids=lambda c: c[0])
def test_dkd_is_finite_for_confident_predictions(case):
    _, s, t, y = case
    s = s.clone().requires_grad_(True)
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    loss = tckd + 8.0 * nckd
    loss.backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd)
    assert torch.isfinite(s.grad).all()


def test_reference_dkd_breaks_where_ours_does_not():
    # why log space: with a confident student the reference takes log(0) and its loss is NaN
    _, s, t, y = _confident_cases()[2]
    assert not torch.isfinite(sum(_reference_dkd(s, t, y, 4.0)))
    assert torch.isfinite(sum(dkd_terms(s, t, y, 4.0)))


def _resnet(name: str, seed: int, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, classes, 3)


def test_dkd_distiller_terms_and_warmup():
    teacher, student = _resnet("resnet8", 1), _resnet("resnet8", 2)
    cfg = DKDConfig(ce_weight=0.7, alpha=1.5, beta=8.0, temperature=4.0, warmup=20)
    d = build_distiller(cfg, student, teacher).train()
    torch.manual_seed(3)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    with torch.no_grad():
        s_logits, t_logits = student(x)[0], teacher(x)[0]
    # the terms themselves are checked against the reference above; here: wiring, weights, warm-up
    tckd, nckd = dkd_terms(s_logits, t_logits, y, 4.0)
    for epoch, factor in [(1, 0.05), (10, 0.5), (20, 1.0), (40, 1.0)]:
        logits, losses = d.forward_train(Batch(x, y), epoch)
        assert set(losses) == {"ce", "tckd", "nckd"}
        torch.testing.assert_close(logits, s_logits)
        torch.testing.assert_close(losses["ce"], 0.7 * F.cross_entropy(s_logits, y))
        torch.testing.assert_close(losses["tckd"], factor * 1.5 * tckd)
        torch.testing.assert_close(losses["nckd"], factor * 8.0 * nckd)
    no_warmup = build_distiller(DKDConfig(warmup=0), student, teacher).train()
    torch.testing.assert_close(no_warmup.forward_train(Batch(x, y), 1)[1]["nckd"], 8.0 * nckd)


# ---------------------------------------------------------------- AT

def _reference_attention(f: torch.Tensor) -> torch.Tensor:
    q = (f * f).mean(dim=1).reshape(f.shape[0], -1)
    return q / q.norm(dim=1, keepdim=True)


def _reference_at(student_feats, teacher_feats) -> torch.Tensor:
    """Σ_stages mean((a_s − a_t)²), equal spatial sizes only (callers pool by hand first)."""
    return sum(((_reference_attention(fs) - _reference_attention(ft)) ** 2).mean()
               for fs, ft in zip(student_feats, teacher_feats))


@pytest.mark.parametrize("teacher_name, student_name", [("resnet110", "resnet20"), ("resnet32x4", "resnet8x4")])
def test_at_distiller_matches_reference_across_widths_and_depths(teacher_name, student_name):
    teacher, student = _resnet(teacher_name, 1, 100), _resnet(student_name, 2, 100)
    d = build_distiller(ATConfig(beta=1000.0, ce_weight=0.5), student, teacher, (3, 32, 32)).train()
    torch.manual_seed(4)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    logits, losses = d.forward_train(Batch(x, y), epoch=1)
    assert set(losses) == {"ce", "at"}
    with torch.no_grad():
        s_logits, s_feats = student(x)
        _, t_feats = teacher(x)
    torch.testing.assert_close(logits, s_logits)
    torch.testing.assert_close(losses["ce"], 0.5 * F.cross_entropy(s_logits, y))
    expected = 1000.0 * _reference_at(s_feats.stages[1:], t_feats.stages[1:])
    torch.testing.assert_close(losses["at"], expected, rtol=1e-5, atol=1e-7)
    assert losses["at"].item() > 0


def _block_mean(f: torch.Tensor, k: int) -> torch.Tensor:
    """Average-pool by k×k blocks, written as a reshape (what adaptive pooling does for an exact ratio)."""
    b, c, h, w = f.shape
    return f.reshape(b, c, h // k, k, w // k, k).mean(dim=(3, 5))


def test_at_pools_the_larger_map_to_the_smaller():
    torch.manual_seed(5)
    student = [torch.rand(3, 8, 8, 8), torch.rand(3, 16, 4, 4), torch.rand(3, 6, 4, 4)]
    teacher = [torch.rand(3, 32, 4, 4), torch.rand(3, 5, 8, 8), torch.rand(3, 12, 4, 4)]
    expected = _reference_at([_block_mean(student[0], 2), student[1], student[2]],
                             [teacher[0], _block_mean(teacher[1], 2), teacher[2]])
    torch.testing.assert_close(at_loss(student, teacher, p=2.0), expected, rtol=1e-5, atol=1e-7)


def test_at_loss_is_zero_for_same_attention_and_needs_paired_maps():
    f = [torch.rand(2, 4, 8, 8)]
    assert at_loss(f, [3.0 * f[0]]).item() < 1e-12  # the map is normalised: scale does not matter
    with pytest.raises(ValueError):
        at_loss(f, f + f)


# ---------------------------------------------------------------- both methods

@pytest.mark.parametrize("cfg", [DKDConfig(), ATConfig()], ids=["dkd", "at"])
def test_one_step_trains_the_student_and_never_touches_the_teacher(cfg):
    teacher, student = _resnet("resnet8", 1), _resnet("resnet8", 2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    d = build_distiller(cfg, student, teacher, (3, 16, 16)).train()
    assert d.extra_parameter_count() == 0
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(6)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    _, losses = d.forward_train(Batch(x, y), epoch=25)
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert not torch.equal(student.state_dict()["fc.weight"], student_before["fc.weight"])
    assert all(not k.startswith("teacher.") for k in d.trainable_state_dict())


@pytest.mark.parametrize("cfg, key", [
    (DKDConfig(beta=-1.0), "method.beta"), (DKDConfig(alpha=-1.0), "method.alpha"),
    (DKDConfig(temperature=0.0), "method.temperature"), (DKDConfig(warmup=-1), "method.warmup"),
    (ATConfig(beta=-1.0), "method.beta"), (ATConfig(p=0.0), "method.p"),
])
def test_bad_values_raise_one_line_config_errors(cfg, key):
    with pytest.raises(ConfigError, match=key) as err:
        cfg.validate()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["dkd", "at"])
def test_end_to_end_run(tmp_path, method):
    # a checkpoint teacher (untrained: only the plumbing is under test) skips training one in the store
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": build_model("resnet8", 10, 1).state_dict()}, teacher)
    argv = [f"store={tmp_path}/runs", "dataset=digits", "teacher=resnet8", f"teacher.checkpoint={teacher}",
            "student=resnet8", f"method={method}", "train=quick", "train.epochs=1", "train.batch_size=256",
            "progress=false", "hardware=cpu"]
    assert main(argv) == 0
    (result,) = [json.loads(p.read_text()) for p in Path(tmp_path / "runs").rglob("result.json")]
    assert result["method"] == method and result["teacher_info"]["source"] == str(teacher)
    assert result["extra_params"] == 0
    assert 0.0 <= result["last_top1"] <= 100.0


@pytest.mark.parametrize("method, key, order", [("at", "beta", 1), ("sad", "beta", 1), ("ofd", "weight", -1)])
def test_a_map_size_dependent_weight_follows_the_number_of_positions_below_32_px(method, key, order):
    """A term averaged over unit-norm maps of P positions goes as 1/P, one summed over them as P: on 8 px digits
    (P a sixteenth of CIFAR's at every stage) the weight is scaled by 16^-order; at 32 px and above it is the
    published one, and size_scaled=false keeps it as given."""
    published = getattr(compose([f"method={method}", "dataset=cifar100"]).method, key)
    assert getattr(compose([f"method={method}", "dataset=tiny_imagenet"]).method, key) == published
    assert getattr(compose([f"method={method}"]).method, key) == pytest.approx(published * 16.0 ** -order)
    assert getattr(compose([f"method={method}", "method.size_scaled=false"]).method, key) == published


def test_the_at_term_on_8_px_maps_is_sixteen_times_the_term_on_32_px_maps_at_the_same_misalignment():
    """The rule's premise, on numbers: the same attention maps upsampled from 8x8 to 32x32 (each position repeated
    4x4) give an AT term 16 times smaller, so beta/16 on the 8 px maps weighs what beta does on the 32 px ones."""
    torch.manual_seed(0)
    small_s, small_t = torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 8)
    big_s, big_t = (F.interpolate(f, scale_factor=4, mode="nearest") for f in (small_s, small_t))
    ratio = at_loss([small_s], [small_t]) / at_loss([big_s], [big_t])
    assert ratio.item() == pytest.approx(16.0, rel=1e-5)
