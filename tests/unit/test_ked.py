"""KED (Chowdhury et al. 2023) checked on numbers: the superfeature-explaining network's combined output is the
normalised product of its branch distributions over the prior, its branch width matches the plain network's
parameters (the released code's 26 and 30), and the loss is its three (four) weighted terms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oracle_kd.core.batch import Batch
from oracle_kd.core.losses import kd_loss
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller
from oracle_kd.methods.at import at_loss
from oracle_kd.methods.ked import KEDConfig
from oracle_kd.methods.sp import sp_loss
from oracle_kd.models import Features, build_model
from oracle_kd.models.fold import fold_batchnorm
from oracle_kd.models.sfx import SFXCifarResNet, combine_branches


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_combined_output_is_the_normalised_product_of_the_branches_over_the_prior():
    g = torch.Generator().manual_seed(0)
    branches = [torch.randn(5, 6, generator=g) for _ in range(3)]
    prior = torch.softmax(torch.randn(6, generator=g), dim=0)
    product = torch.stack([torch.softmax(b, dim=1) for b in branches]).prod(dim=0) / prior ** 2  # π^(M−1)
    want = product / product.sum(dim=1, keepdim=True)
    z = combine_branches(branches, prior.log())
    torch.testing.assert_close(torch.softmax(z, dim=1), want)
    # the explaining teacher is trained by plain CE on z: −log of the normalised product at the label
    y = torch.tensor([0, 1, 2, 3, 4])
    assert F.cross_entropy(z, y).item() == pytest.approx(-want[torch.arange(5), y].log().mean().item(), rel=1e-5)


@pytest.mark.parametrize("arch,width", [("resnet20", 30), ("resnet8", 26)])
def test_the_branch_width_matches_the_released_code_at_100_classes(arch, width):
    model, plain = build_model(f"sfx4_{arch}", 100, 3), build_model(arch, 100, 3)
    assert model.branch_width == width
    assert abs(_params(model) - _params(plain)) / _params(plain) < 0.03
    # no other width comes closer (the matching solves a quadratic: check it against every neighbour)
    for w in (width - 1, width + 1):
        assert abs(_params(build_model(f"sfx4_{arch}", 100, 3, branch_width=w)) - _params(plain)) > \
            abs(_params(model) - _params(plain))
    assert _params(model) == {"resnet20": 282_288, "resnet8": 86_000}[arch]  # counted by hand from the layout


@pytest.mark.parametrize("arch,width", [("wrn_16_2", 58), ("wrn_40_2", 62), ("vgg8", 214), ("vgg13", 235)])
def test_wrn_and_vgg_explaining_models_match_their_plain_parameters(arch, width):
    """WRN-16-2 gets the released code's student width, 58; its VGGs (218 for VGG8, 236 for VGG13) have two dense
    layers per branch where ours have one classifier, so ours come out a little narrower."""
    model, plain = build_model(f"sfx4_{arch}", 100, 3), build_model(arch, 100, 3)
    assert model.branch_width == width
    assert abs(_params(model) - _params(plain)) / _params(plain) < 0.01
    z, f = model.eval()(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(z, combine_branches(f.branch_logits))
    assert len(f.branch_maps) == 4 and f.stages[-1].shape[1] == 4 * width


def test_the_features_expose_every_branch():
    model = build_model("sfx4_resnet8", 10, 3, branch_width=5).eval()
    x = torch.randn(3, 3, 16, 16)
    z, f = model(x)
    assert isinstance(f, Features) and len(f.branch_logits) == len(f.branch_maps) == 4
    assert all(b.shape == (3, 10) for b in f.branch_logits) and all(m.shape == (3, 5, 4, 4) for m in f.branch_maps)
    assert f.stages[-1].shape == (3, 20, 4, 4) and f.pooled.shape == (3, 20)
    torch.testing.assert_close(f.stages[-1], torch.cat(f.branch_maps, dim=1))
    torch.testing.assert_close(z, combine_branches(f.branch_logits))
    # each branch sees only its own channel group: zeroing another group's split output leaves it unchanged
    assert [len(b) for b in model.branches] == [1] * 4 and model.split[0].out_channels == 20


def test_an_explaining_teacher_folds_its_batchnorm_to_the_same_function():
    model = build_model("sfx4_resnet56x2", 10, 3, branch_width=6).double().eval()
    for m in model.modules():  # non-trivial statistics, as a trained network has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ref, ref_f = model(x)
        fold_batchnorm(model)
        out, f = model(x)
    torch.testing.assert_close(out, ref)
    for a, b in zip(f.branch_logits, ref_f.branch_logits):
        torch.testing.assert_close(a, b)


def _ked(cfg: KEDConfig, student_arch: str = "sfx4_resnet8", teacher_arch: str = "sfx4_resnet14", width: int = 4):
    torch.manual_seed(0)
    options = {"branch_width": width} if student_arch.startswith("sfx") else {}
    teacher = build_model(teacher_arch, 5, 3, **options)
    student = build_model(student_arch, 5, 3, **options)
    return build_distiller(cfg, student, teacher, (3, 8, 8)), teacher, student


X, Y = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 4])


def test_the_ked_loss_is_its_three_terms_with_the_released_weights():
    d, teacher, student = _ked(KEDConfig())
    logits, terms = d.forward_train(Batch(X, Y), epoch=1)
    with torch.no_grad():
        z_t, f_t = teacher(X)
    z_s, f_s = d.student(X)
    assert set(terms) == {"ce", "kd", "explain"}
    assert terms["ce"].item() == pytest.approx(0.3 * F.cross_entropy(z_s, Y).item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(0.7 * 0.3 * kd_loss(z_s, z_t, 10.0).item(), rel=1e-5)
    explain = sum(0.7 * 0.7 / 4 * kd_loss(s, t, 10.0).item() for s, t in zip(f_s.branch_logits, f_t.branch_logits))
    assert terms["explain"].item() == pytest.approx(explain, rel=1e-5)
    # the weights as the released code has them at M = 4: CE 0.3, combined KL 21 (·KL), each branch KL 12.25
    w = KEDConfig().weights(4)
    assert (w["kd"] * 100, w["explain"] * 100) == pytest.approx((21.0, 12.25))


def test_ked_with_one_branch_and_equal_temperatures_is_kd():
    torch.manual_seed(0)
    teacher = SFXCifarResNet(8, 5, 3, groups=1, branch_width=6).eval()
    student = SFXCifarResNet(8, 5, 3, groups=1, branch_width=4)
    d = build_distiller(KEDConfig(temperature=4.0, tau=4.0), student, teacher, (3, 8, 8)).train()
    torch.manual_seed(1)
    _, terms = d.forward_train(Batch(X, Y), epoch=1)
    torch.manual_seed(1)
    z_s, f_s = d.student(X)
    with torch.no_grad():
        z_t, f_t = teacher(X)
    # with M = 1, z = log_softmax(z^1): the same distribution as the one branch at any temperature
    kd = 0.3 * F.cross_entropy(f_s.branch_logits[0], Y) + 0.7 * kd_loss(f_s.branch_logits[0], f_t.branch_logits[0], 4.0)
    assert sum(terms.values()).item() == pytest.approx(kd.item(), rel=1e-5)


@pytest.mark.parametrize("feature", ["fitnet", "at", "sp"])
def test_ked_plus_x_weights_each_branch_pair(feature):
    d, teacher, student = _ked(KEDConfig(feature=feature))
    _, terms = d.forward_train(Batch(X, Y), epoch=1)
    z_s, f_s = d.student(X)
    with torch.no_grad():
        z_t, f_t = teacher(X)
    assert set(terms) == {"ce", "kd", "explain", feature}
    # the weights worked out by hand: combined KL 21, each branch KL 3.675, each branch feature term 0.08575
    w = KEDConfig(feature=feature).weights(4)
    assert (w["kd"] * 100, w["explain"] * 100, w["feature"]) == pytest.approx((21.0, 3.675, 0.08575))
    explain = sum(kd_loss(s, t, 10.0) for s, t in zip(f_s.branch_logits, f_t.branch_logits))
    assert terms["explain"].item() == pytest.approx(w["explain"] * explain.item(), rel=1e-5)
    pairs = list(zip(f_s.branch_maps, f_t.branch_maps))
    if feature == "at":
        want = sum(1000 * at_loss([s], [t]).item() for s, t in pairs)
    elif feature == "sp":
        want = sum(3000 * sp_loss([s], [t]).item() for s, t in pairs)
    else:  # a 3×3 'same' conv + BN + ReLU regressor per branch onto the teacher branch's channels
        assert all(r[0].kernel_size == (3, 3) and r[0].padding == (1, 1) for r in d.regressors)
        want = sum(F.mse_loss(r(s), t).item() for r, (s, t) in zip(d.regressors, pairs))
    assert terms[feature].item() == pytest.approx(w["feature"] * want, rel=1e-5)


@pytest.mark.parametrize("feature", ["none", "at", "sp", "fitnet"])
def test_the_kd_plus_x_baseline_runs_on_plain_models(feature):
    d, teacher, student = _ked(KEDConfig(baseline=True, feature=feature), "resnet8", "resnet14")
    _, terms = d.forward_train(Batch(X, Y), epoch=1)
    z_s, f_s = d.student(X)
    with torch.no_grad():
        z_t, f_t = teacher(X)
    rho = 0.0 if feature == "none" else 0.7
    assert "explain" not in terms
    assert terms["kd"].item() == pytest.approx(0.7 * (1 - rho) * kd_loss(z_s, z_t, 10.0).item(), rel=1e-5)
    if feature == "at":
        assert terms["at"].item() == pytest.approx(0.7 * 0.7 * 1000 * at_loss(f_s.stages[-1:], f_t.stages[-1:]).item(),
                                                   rel=1e-5)
    assert math.isclose(KEDConfig(baseline=True, feature="sp").weights(4)["feature"], 0.49)


def test_ked_refuses_plain_models_and_unequal_branch_counts_in_one_line():
    with pytest.raises(ConfigError, match="sfx"):
        _ked(KEDConfig(), "resnet8", "resnet14")
    teacher = SFXCifarResNet(8, 5, 3, groups=2, branch_width=4)
    with pytest.raises(ConfigError, match="teacher has 2 and the student 4"):
        build_distiller(KEDConfig(), build_model("sfx4_resnet8", 5, 3, branch_width=4), teacher, (3, 8, 8))
    with pytest.raises(ConfigError, match="method.feature"):
        KEDConfig(feature="crd").validate()
