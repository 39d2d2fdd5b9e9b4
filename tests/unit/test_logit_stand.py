"""Logit standardisation (Sun et al., CVPR 2024) as an option of kd, dkd, mlkd and ctkd: the z-score on a hand
example, the invariance that is the paper's point, each method's terms against the reference code's formulas
re-written here in float64, the run identity of the new option, and the per-pair presets read from the paper's logs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers.tiny_net import TinyNet
from oracle_kd.cli import compose
from oracle_kd.config import CONF_DIR
from oracle_kd.core.batch import Batch
from oracle_kd.core.losses import kd_loss, standardize
from oracle_kd.engine.teacher import identify
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller, method_entry
from oracle_kd.methods.ctkd import CTKDConfig
from oracle_kd.methods.dkd import DKDConfig, dkd_terms
from oracle_kd.methods.kd import KDConfig
from oracle_kd.methods.mlkd import MLKDConfig, masked_fractions, mlkd_terms
from oracle_kd.methods.oracle import OracleConfig
from oracle_kd.methods.sad import SADConfig
from oracle_kd.models import available_models
from oracle_kd.store.identity import method_identity

# ---------------------------------------------------------------- the z-score


def test_standardize_on_a_hand_example():
    """Row (1, 2, 3, 6): mean 3, squared deviations 4 + 1 + 0 + 9 = 14, unbiased variance 14/3 (N − 1 = 3)."""
    z = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    sd = math.sqrt(14 / 3)
    expected = torch.tensor([[-2.0, -1.0, 0.0, 3.0]], dtype=torch.float64) / (1e-7 + sd)
    out = standardize(z)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)
    assert abs(out.mean().item()) < 1e-15
    # unbiased std of the result: sd / (1e-7 + sd), one minus 1e-7/sd to first order
    assert out.std().item() == pytest.approx(1 - 1e-7 / sd, abs=1e-14)


def test_the_guard_is_added_to_the_standard_deviation():
    """A constant row gives zeros (0 / 1e-7), not NaN. Row (0, 1e-7): deviations ±5e-8, unbiased std 1e-7/√2, so
    ±5e-8 / (1e-7 + 1e-7/√2) = ±(1 − 1/√2) ≈ ±0.293; a guard under the square root (√(var + 1e-7)) would give ±1.6e-4."""
    out = standardize(torch.tensor([[5.0, 5.0, 5.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.equal(out, torch.zeros(2, 3, dtype=torch.float64))
    tiny = standardize(torch.tensor([[0.0, 1e-7]], dtype=torch.float64))
    torch.testing.assert_close(tiny, torch.tensor([[-1.0, 1.0]], dtype=torch.float64) * (1 - 1 / math.sqrt(2)))


def test_standardize_is_fp32_for_bf16_logits():
    z = torch.randn(3, 7).bfloat16()
    assert standardize(z).dtype == torch.float32
    torch.testing.assert_close(standardize(z), standardize(z.float()))


# ---------------------------------------------------------------- the paper's point: shift and scale do not matter

def _logits(seed: int, b: int = 6, c: int = 10) -> torch.Tensor:
    return 3 * torch.randn(b, c, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _affine(z: torch.Tensor, seed: int) -> torch.Tensor:
    """a·z + b with a per-sample a in [0.5, 3] and b in [−5, 5]."""
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + 2.5 * torch.rand(z.shape[0], 1, dtype=z.dtype, generator=g)
    return a * z + (10 * torch.rand(z.shape[0], 1, dtype=z.dtype, generator=g) - 5)


# standardize(a·z + b) = (z − m)/(1e-7/a + sd): the z-scores move by at most 1e-7·|1 − 1/a|/sd ≤ 1e-7 relative (a ≥ 0.5,
# sd ≈ 3 here), and a smooth loss of them by the same order; 1e-6 leaves a factor 10.
INVARIANCE_RTOL = 1e-6


@pytest.mark.parametrize("tau", [2.0, 4.0])
def test_the_ls_kd_loss_ignores_a_per_sample_shift_and_scale_of_either_logits(tau):
    s, t = _logits(0), _logits(1)
    ls_kd = kd_loss(standardize(s), standardize(t), tau)
    torch.testing.assert_close(kd_loss(standardize(_affine(s, 2)), standardize(t), tau), ls_kd,
                               rtol=INVARIANCE_RTOL, atol=0)
    torch.testing.assert_close(kd_loss(standardize(s), standardize(_affine(t, 3)), tau), ls_kd,
                               rtol=INVARIANCE_RTOL, atol=0)
    # without the z-score the same change is far from free: plain KD asks the student to match the teacher's range
    assert abs(kd_loss(_affine(s, 2), t, tau) - kd_loss(s, t, tau)) > 0.1 * kd_loss(s, t, tau)


def test_the_ls_dkd_terms_ignore_a_per_sample_shift_and_scale_of_the_student():
    s, t, y = _logits(4), _logits(5), torch.arange(6) % 10
    plain = dkd_terms(standardize(s), standardize(t), y, 2.0)
    moved = dkd_terms(standardize(_affine(s, 6)), standardize(t), y, 2.0)
    torch.testing.assert_close(moved, plain, rtol=INVARIANCE_RTOL, atol=0)


# ---------------------------------------------------------------- each method against the reference formulas

def _zscore(z: torch.Tensor) -> torch.Tensor:
    """The reference's normalisation written out: centred, over (1e-7 + √(Σ(z − m)²/(C − 1)))."""
    centred = z - z.sum(dim=1, keepdim=True) / z.shape[1]
    return centred / (1e-7 + torch.sqrt((centred ** 2).sum(dim=1, keepdim=True) / (z.shape[1] - 1)))


def _ref_kd(s: torch.Tensor, t: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """Σ_c p_t (log p_t − log p_s) at τ, batch mean, × τ²."""
    p_t = F.softmax(t / tau, dim=1)
    return (p_t * (torch.log(p_t) - F.log_softmax(s / tau, dim=1))).sum(1).mean() * tau ** 2


def _ref_dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's TCKD (binary [target, rest] probabilities) and NCKD (target logit pushed down by 1000)."""
    gt = F.one_hot(y, s.shape[1]).to(s.dtype)
    p_s, p_t = F.softmax(s / tau, dim=1), F.softmax(t / tau, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(b_s.log(), b_t, reduction="sum") * tau ** 2 / s.shape[0]
    nckd = F.kl_div(F.log_softmax(s / tau - 1000 * gt, dim=1), F.softmax(t / tau - 1000 * gt, dim=1),
                    reduction="sum") * tau ** 2 / s.shape[0]
    return tckd, nckd


def _pair64(seed: int = 0, classes: int = 7) -> tuple[TinyNet, TinyNet]:
    torch.manual_seed(seed)
    return TinyNet(classes).double(), TinyNet(classes).double()


def _batch64(classes: int = 7, b: int = 6) -> Batch:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(b, 1, 4, 4, dtype=torch.float64, generator=g)
    return Batch(x, torch.arange(b) % classes, torch.arange(b), 0, {"strong": x.flip(-1) + 0.5})


def _logits_of(student: TinyNet, teacher: TinyNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return student(x)[0], teacher(x)[0]


def test_kd_with_logit_stand_is_the_formula():
    student, teacher = _pair64()
    d = build_distiller(KDConfig(ce_weight=0.1, alpha=9.0, temperature=2.0, logit_stand=True), student, teacher).train()
    batch = _batch64()
    s, t = _logits_of(student, teacher, batch.x)
    _, losses = d.forward_train(batch, 1)
    torch.testing.assert_close(losses["kd"], 9.0 * _ref_kd(_zscore(s), _zscore(t), 2.0), rtol=1e-12, atol=0)
    torch.testing.assert_close(losses["ce"], 0.1 * F.cross_entropy(s, batch.y), rtol=1e-12, atol=0)


def test_dkd_with_logit_stand_is_the_formula():
    student, teacher = _pair64(1)
    cfg = DKDConfig(alpha=18.0, beta=36.0, temperature=3.0, warmup=20, logit_stand=True)
    d = build_distiller(cfg, student, teacher).train()
    batch = _batch64()
    s, t = _logits_of(student, teacher, batch.x)
    tckd, nckd = _ref_dkd(_zscore(s), _zscore(t), batch.y, 3.0)
    _, losses = d.forward_train(batch, 5)  # warm-up factor 5/20
    torch.testing.assert_close(losses["tckd"], 0.25 * 18.0 * tckd, rtol=1e-10, atol=0)
    torch.testing.assert_close(losses["nckd"], 0.25 * 36.0 * nckd, rtol=1e-10, atol=0)


def test_mlkd_with_logit_stand_standardises_the_kd_terms_only():
    """As the reference: KD_T on z-scores; the class/batch correlations and the masks on the raw logits."""
    student, teacher = _pair64(2)
    d = build_distiller(MLKDConfig(kd_weight=9.0, temperature=2.0, logit_stand=True), student, teacher).train()
    batch = _batch64()
    s, t = _logits_of(student, teacher, batch.x)
    s2, t2 = _logits_of(student, teacher, batch.views["strong"])
    plain = mlkd_terms(s, t, s2, t2, 2.0)
    zs, zt, zs2, zt2 = _zscore(s), _zscore(t), _zscore(s2), _zscore(t2)
    frac = masked_fractions(t)[0]  # checked by hand in test_mlkd.py; from the raw teacher logits
    temps = (2.0, 3.0, 5.0, 2.0, 6.0)
    kd = (frac * sum(_ref_kd(zs, zt, T) for T in temps)
          + _ref_kd(zs2, zt2, 2.0) + _ref_kd(zs2, zt2, 3.0) + _ref_kd(zs2, zt2, 5.0)
          + _ref_kd(zs, zt, 2.0) + _ref_kd(zs, zt, 6.0))
    _, losses = d.forward_train(batch, 1)
    torch.testing.assert_close(losses["kd"], 9.0 * kd, rtol=1e-12, atol=0)
    torch.testing.assert_close(losses["cc"], 9.0 * plain["cc"], rtol=1e-12, atol=0)
    torch.testing.assert_close(losses["bc"], 9.0 * plain["bc"], rtol=1e-12, atol=0)


def test_ctkd_with_logit_stand_is_the_formula_at_the_learnt_temperature():
    student, teacher = _pair64(3)
    d = build_distiller(CTKDConfig(alpha=9.0, t_start=2.0, logit_stand=True), student, teacher).train()
    batch = _batch64()
    s, t = _logits_of(student, teacher, batch.x)
    temp = 2.0 + 20.0 / (1 + math.exp(-1.0))  # θ = 1 at the start
    _, losses = d.forward_train(batch, 1)
    torch.testing.assert_close(losses["kd"], 9.0 * _ref_kd(_zscore(s), _zscore(t), temp), rtol=1e-12, atol=0)


def test_oracle_reads_the_switch_and_a_method_whose_loss_ignores_it_refuses_it():
    OracleConfig(logit_stand=True).validate()  # Oracle KD is KD's loss on another teacher input
    with pytest.raises(ConfigError, match=r"^method\.logit_stand=True is not an option of method sad"):
        SADConfig(logit_stand=True).validate()


# ---------------------------------------------------------------- run identity

KD_SEED1 = "e6b27337e934"  # tests/unit/test_identity.py: 'method=kd seed=1 train=paper', recorded before the option
DKD_CIFAR = "fbb18b05861e"  # same file: 'method=dkd dataset=cifar100'


def test_a_when_set_option_is_hashed_only_away_from_its_default():
    assert "logit_stand" not in method_identity(KDConfig()) and "logit_stand" not in method_identity(MLKDConfig())
    assert method_identity(KDConfig(logit_stand=True))["logit_stand"] is True
    assert method_identity(DKDConfig(logit_stand=True))["logit_stand"] is True
    assert "alpha_by_pair" not in method_identity(KDConfig(alpha_by_pair={"resnet56-resnet20": 9.0}))


def test_logit_stand_enters_a_runs_identity_only_when_on():
    base = ["method=kd", "seed=1", "train=paper"]
    assert identify(compose(base))[1] == KD_SEED1
    assert identify(compose([*base, "method.logit_stand=false"]))[1] == KD_SEED1
    assert identify(compose([*base, "method.logit_stand=true"]))[1] != KD_SEED1
    assert identify(compose(["method=dkd", "dataset=cifar100", "method.logit_stand=false"]))[1] == DKD_CIFAR


# ---------------------------------------------------------------- the per-pair presets (the paper's logs)

PAPER_PAIRS = {"resnet32x4-resnet8x4", "vgg13-vgg8", "wrn_40_2-wrn_40_1", "wrn_40_2-wrn_16_2", "resnet56-resnet20",
               "resnet110-resnet32", "resnet110-resnet20", "resnet32x4-shufflenetv2", "resnet32x4-wrn_16_2",
               "resnet32x4-wrn_40_2", "wrn_40_2-resnet8x4", "wrn_40_2-mobilenetv2", "vgg13-mobilenetv2",
               "resnet50c-mobilenetv2"}


def _preset(name: str):
    """The preset's yaml as its method's config (the tables as written), and its yaml."""
    data = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml"))
    data.pop("defaults")
    return method_entry(data["name"])[1](**data), data


@pytest.mark.parametrize("preset, tables, pairs", [
    ("kd_ls", ("alpha_by_pair", "temperature_by_pair"), PAPER_PAIRS),
    ("dkd_ls", ("alpha_by_pair", "beta_by_pair", "temperature_by_pair"), PAPER_PAIRS),
    # the README's resnet56-resnet20 and wrn_40_2-mobilenetv2 MLKD+LS numbers have no log
    ("mlkd_ls", ("kd_weight_by_pair",), PAPER_PAIRS - {"resnet56-resnet20", "wrn_40_2-mobilenetv2"}),
])
def test_a_preset_resolves_each_pair_to_its_table_values(preset, tables, pairs):
    cfg, data = _preset(preset)
    cfg.validate()
    assert cfg.logit_stand
    models = set(available_models())
    for table in tables:
        assert set(data[table]) == pairs, table
        for pair, value in data[table].items():
            teacher, student = pair.split("-")
            assert {teacher, student} <= models, pair
            resolved = cfg.for_pair(teacher, student)
            assert getattr(resolved, table.removesuffix("_by_pair")) == value and getattr(resolved, table) is None
    unlisted = cfg.for_pair("resnet8", "resnet8")  # a pair the logs lack: the preset's own values
    assert all(getattr(unlisted, t.removesuffix("_by_pair")) == getattr(cfg, t.removesuffix("_by_pair"))
               for t in tables)


def test_a_logged_setting_reads_as_the_logs_name():
    """dkd,resnet56,resnet20,3,18,2.0: base temperature 3, kd weight 18 multiplying α = 1 and β = 2.0;
    kd,ResNet50,MobileNetV2,3,1 and kd,resnet110,resnet20,4,12; mlkd,vgg13,vgg8,2,6."""
    dkd = _preset("dkd_ls")[0].for_pair("resnet56", "resnet20")
    assert (dkd.temperature, dkd.alpha, dkd.beta, dkd.ce_weight, dkd.warmup) == (3.0, 18.0, 36.0, 1.0, 20)
    kd = _preset("kd_ls")[0]
    assert (kd.for_pair("resnet50c", "mobilenetv2").temperature, kd.for_pair("resnet50c", "mobilenetv2").alpha) == (3, 1)
    assert (kd.for_pair("resnet110", "resnet20").temperature, kd.for_pair("resnet110", "resnet20").alpha) == (4, 12)
    assert kd.ce_weight == 0.1
    mlkd = _preset("mlkd_ls")[0].for_pair("vgg13", "vgg8")
    assert (mlkd.temperature, mlkd.kd_weight, mlkd.ce_weight) == (2.0, 6.0, 0.1)
    ctkd, _ = _preset("ctkd_ls")
    assert (ctkd.ce_weight, ctkd.alpha, ctkd.t_start, ctkd.logit_stand) == (0.1, 9.0, 2.0, True)


@pytest.mark.parametrize("preset, plain", [
    ("kd_ls", ["method=kd", "method.ce_weight=0.1", "method.alpha=12", "method.temperature=4"]),
    ("dkd_ls", ["method=dkd", "method.alpha=15", "method.beta=30", "method.temperature=2"]),
    ("mlkd_ls", ["method=mlkd", "method.kd_weight=9", "method.temperature=2"]),
    ("ctkd_ls", ["method=ctkd", "method.alpha=9", "method.t_start=2"]),
])
def test_a_preset_run_is_the_run_of_the_plain_options(preset, plain):
    pair = ["teacher=resnet110", "student=resnet20"]
    via_preset = compose([f"method={preset}", *pair])
    direct = compose([*plain, "method.logit_stand=true", *pair])
    assert via_preset.method == direct.method
    assert identify(via_preset)[1] == identify(direct)[1]
