"""CTKD (Li et al., AAAI 2023) on numbers: T(θ) at the start, λ's cosine schedule against the values the official
code printed, the gradient reversal (θ gets λ times its ordinary gradient, checked by a central difference; the
student its ordinary one), θ stepped by the run's SGD and kept in a checkpoint, and the loss against the formula in
float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.tiny_net import TinyNet
from oracle_kd.config import TrainConfig
from oracle_kd.core.batch import Batch
from oracle_kd.core.losses import kd_loss
from oracle_kd.engine.step import make_optimizer
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller
from oracle_kd.methods.ctkd import CTKD, CTKDConfig, grl_scale, scale_gradient

CLASSES = 7


def _ctkd(cfg: CTKDConfig | None = None, seed: int = 0) -> CTKD:
    """Tiny float64 student and teacher whose logits spread over ±10 or so, the size T ≈ 15 is meant for (a fresh
    TinyNet's are ±1: at T ≈ 15 both distributions are then nearly uniform and θ's gradient vanishes)."""
    torch.manual_seed(seed)
    student, teacher = TinyNet(CLASSES).double(), TinyNet(CLASSES).double()
    with torch.no_grad():
        student.fc.weight.mul_(10)
        teacher.fc.weight.mul_(20)
    return build_distiller(cfg or CTKDConfig(), student, teacher).train()


def _batch(b: int = 6) -> Batch:
    x = torch.randn(b, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return Batch(x, torch.arange(b) % CLASSES)


def _logits(d: CTKD, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():  # train-mode BN uses the batch's statistics: the same logits forward_train sees
        return d.student(x)[0], d.teacher(x)[0]


def test_the_temperature_at_the_start():
    """θ = 1 (the code's torch.ones(1)): T = 1 + 20·σ(1) = 1 + 20/(1 + e⁻¹) ≈ 15.62."""
    d = _ctkd()
    assert d.theta.item() == 1.0 and d.theta.dtype == torch.float64  # in the student's dtype
    assert d.temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-15)
    assert 15.62 < d.temperature().item() < 15.63


# decay_value printed by the official code at epochs 1-4 (the LSKD repository's logs/CTKD/ctkd,resnet56,resnet20,2,9.txt)
PRINTED = {1: -0.02447174185242318, 2: -0.09549150281252627, 3: -0.20610737385376343, 4: -0.3454915028125263}


def test_lambda_is_a_cosine_from_0_to_minus_1_over_10_epochs_then_constant():
    """λ_e = −1 + (1 + cos(π·min(e, 10)/10))/2: −0.0245 at 1, −1/2 at 5 (cos π/2 = 0), −1 at 10 and after."""
    expected = {1: -1 + (1 + math.cos(math.pi / 10)) / 2, 5: -0.5, 10: -1.0, 11: -1.0, 240: -1.0}
    d = _ctkd()
    for epoch, value in expected.items():
        assert d.grl_scale(epoch) == pytest.approx(value, abs=1e-15), epoch
    for epoch, value in PRINTED.items():
        assert grl_scale(epoch, 0.0, -1.0, 10) == pytest.approx(value, abs=1e-15), epoch


def test_the_reversal_layer_is_the_identity_forward_and_scales_the_gradient_backward():
    x = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    y = scale_gradient(x, -0.5)
    assert y.item() == 0.3
    (y ** 2).backward()  # d(x²)/dx = 0.6 without the layer
    assert x.grad.item() == pytest.approx(-0.3, rel=1e-15)


def _kd_term_at(d: CTKD, s: torch.Tensor, t: torch.Tensor, theta: float) -> float:
    """alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) at T = t_start + t_end·σ(θ), written out (CE does not depend on θ)."""
    temp = d.cfg.t_start + d.cfg.t_end / (1 + math.exp(-theta))
    p_t = F.softmax(t / temp, dim=1)
    return d.cfg.alpha * temp ** 2 * (p_t * (p_t.log() - F.log_softmax(s / temp, dim=1))).sum(1).mean().item()


# Central difference in float64 with h = 1e-5: truncation h²·|L'''|/6 ~ 1e-11 and rounding ~ 1e-16·|L|/h ~ 1e-11 for
# a loss and derivatives of order 1, so agreement to 1e-6 of the gradient (itself ~ 1e-3 .. 1e-1 here) is safe.
H, FD_RTOL = 1e-5, 1e-6


def _dloss_dtheta(d: CTKD, s: torch.Tensor, t: torch.Tensor) -> float:
    theta = d.theta.item()
    return (_kd_term_at(d, s, t, theta + H) - _kd_term_at(d, s, t, theta - H)) / (2 * H)


def test_the_loss_is_the_formula_at_the_learnt_temperature():
    d, batch = _ctkd(), _batch()
    s, t = _logits(d, batch.x)
    _, losses = d.forward_train(batch, 3)
    assert set(losses) == {"ce", "kd"}
    assert losses["kd"].item() == pytest.approx(_kd_term_at(d, s, t, 1.0), rel=1e-12)
    assert losses["ce"].item() == pytest.approx(0.1 * F.cross_entropy(s, batch.y).item(), rel=1e-12)


@pytest.mark.parametrize("epoch", [1, 5, 10])
def test_theta_gets_lambda_times_its_gradient_and_the_student_its_ordinary_one(epoch):
    d, batch = _ctkd(), _batch()
    s, t = _logits(d, batch.x)
    _, losses = d.forward_train(batch, epoch)
    sum(losses.values()).backward()
    assert d.theta.grad.item() == pytest.approx(grl_scale(epoch, 0.0, -1.0, 10) * _dloss_dtheta(d, s, t), rel=FD_RTOL)
    # the student's gradient is KD's at the fixed temperature T(θ): the reversal touches θ alone
    reversed_grads = [p.grad.clone() for p in d.student.parameters()]
    d.student.zero_grad()
    s_logits = d.student(batch.x)[0]
    (0.1 * F.cross_entropy(s_logits, batch.y) + 0.9 * kd_loss(s_logits, t, d.temperature().item())).backward()
    for got, plain in zip(reversed_grads, (p.grad for p in d.student.parameters())):
        torch.testing.assert_close(got, plain, rtol=1e-12, atol=1e-15)


def test_theta_is_stepped_by_the_runs_sgd_up_the_loss_and_kept_in_the_checkpoint():
    """At epoch 10 (λ = −1) one SGD step (lr η, weight decay w, momentum's first step is the gradient) moves θ to
    θ − η·(λ·∂L/∂θ + w·θ) = θ + η·∂L/∂θ − η·w·θ: up the distillation loss the student goes down."""
    d, batch = _ctkd(), _batch()
    s, t = _logits(d, batch.x)
    recipe = TrainConfig(lr=0.05, momentum=0.9, weight_decay=5e-4)
    optimizer = make_optimizer(d.trainable_parameters(), recipe)
    assert any(p is d.theta for group in optimizer.param_groups for p in group["params"])
    assert d.extra_parameter_count() == 1
    g = _dloss_dtheta(d, s, t)
    _, losses = d.forward_train(batch, 10)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    assert d.theta.item() == pytest.approx(1.0 + 0.05 * g - 0.05 * 5e-4 * 1.0, rel=1e-9)
    assert (d.theta.item() - 1.0 + 0.05 * 5e-4) * g > 0  # the gradient's part of the step goes up the loss
    state = d.trainable_state_dict()
    assert "theta" in state and not any(k.startswith("teacher.") for k in state)
    resumed = _ctkd(seed=1)
    resumed.load_trainable_state_dict(state)
    assert resumed.theta.item() == d.theta.item() and resumed.temperature().item() == d.temperature().item()


@pytest.mark.parametrize("key, value", [("decay_loops", 0), ("t_start", 0.0), ("t_end", -1.0), ("alpha", -0.1)])
def test_invalid_options_are_refused_in_one_line(key, value):
    with pytest.raises(ConfigError, match=rf"^method\.{key}="):
        CTKDConfig(**{key: value}).validate()
