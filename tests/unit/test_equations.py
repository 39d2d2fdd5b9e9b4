"""Each equation of the paper and of Hinton KD, checked on numbers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from oracle_kd.core.batch import Batch
from oracle_kd.core.reinforce import reinforce
from oracle_kd.methods import build_distiller, kd_loss
from oracle_kd.methods.ce import CEConfig
from oracle_kd.methods.kd import KDConfig
from oracle_kd.methods.oracle import OracleConfig


def test_kd_loss_matches_hand_computation():
    # two samples, three classes, tau = 2: tau^2 * mean_b sum_c p_t log(p_t / p_s)
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    tau = 2.0
    total = 0.0
    for b in range(2):
        zs = [math.exp(v / tau) for v in s[b].tolist()]
        zt = [math.exp(v / tau) for v in t[b].tolist()]
        ps = [z / sum(zs) for z in zs]
        pt = [z / sum(zt) for z in zt]
        total += sum(pt[c] * math.log(pt[c] / ps[c]) for c in range(3))
    expected = tau**2 * total / 2
    assert math.isclose(kd_loss(s, t, tau).item(), expected, rel_tol=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(8, 10)
    assert kd_loss(z, z, 4.0).abs().item() < 1e-6
    assert kd_loss(z, torch.randn(8, 10), 4.0).item() > 0


def test_kd_loss_fp32_under_bf16_inputs():
    s, t = torch.randn(4, 10).bfloat16(), torch.randn(4, 10).bfloat16()
    out = kd_loss(s, t, 4.0)
    assert out.dtype == torch.float32
    assert torch.isclose(out, kd_loss(s.float(), t.float(), 4.0))


def _independent_x_star(teacher, x, y, gamma, reduction):
    """x − γ|x| ⊙ ∇x CE, written out with a plain backward on a copy of the teacher's graph."""
    x = x.clone().requires_grad_(True)
    logits = teacher(x)[0]
    ce = F.cross_entropy(logits, y, reduction=reduction)
    ce.backward()
    return (x - gamma * x.abs() * x.grad).detach()


def test_reinforce_equals_the_equation(tiny_net):
    teacher = tiny_net(5, 1).eval()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    for reduction in ("mean", "sum"):
        got = reinforce(teacher, x, y, gamma=0.7, reduction=reduction)
        want = _independent_x_star(teacher, x, y, 0.7, reduction)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # mean: every sample moves by gamma/B; sum with gamma/B gives the same point
    torch.testing.assert_close(reinforce(teacher, x, y, gamma=0.7, reduction="mean"),
                               reinforce(teacher, x, y, gamma=0.7 / 6, reduction="sum"), rtol=1e-5, atol=1e-6)


def test_reinforce_gamma_zero_is_identity_and_rec_num_repeats(tiny_net):
    teacher = tiny_net(5, 1).eval()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
    assert torch.equal(reinforce(teacher, x, y, gamma=0.0), x)
    once = reinforce(teacher, x, y, gamma=0.5)
    twice = reinforce(teacher, x, y, gamma=0.5, rec_num=2)
    torch.testing.assert_close(twice, reinforce(teacher, once, y, gamma=0.5))
    assert not x.requires_grad and not twice.requires_grad


def test_reinforce_lowers_teacher_ce(tiny_net):
    teacher = tiny_net(5, 1).eval()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 5, (32,))
    before = F.cross_entropy(teacher(x)[0], y).item()
    after = F.cross_entropy(teacher(reinforce(teacher, x, y, gamma=1.0, reduction="sum"))[0], y).item()
    assert after < before


def test_oracle_loss_is_ce_plus_alpha_tau2_kl_on_x_star(tiny_net):
    teacher, student = tiny_net(5, 1, seed=1), tiny_net(5, 1, seed=2)
    cfg = OracleConfig(ce_weight=0.5, alpha=0.8, temperature=2.0, gamma=0.3)
    d = build_distiller(cfg, student, teacher)
    d.train()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    logits, losses = d.forward_train(Batch(x, y), epoch=1)
    x_star = _independent_x_star(teacher, x, y, 0.3, "mean")
    with torch.no_grad():
        t_logits = teacher(x_star)[0]
    s_logits = student(x)[0]
    torch.testing.assert_close(logits, s_logits)
    torch.testing.assert_close(losses["ce"], 0.5 * F.cross_entropy(s_logits, y))
    torch.testing.assert_close(losses["kd"], 0.8 * kd_loss(s_logits, t_logits, 2.0), rtol=1e-5, atol=1e-6)
    assert teacher.training is False


def test_kd_teacher_sees_plain_x(tiny_net):
    teacher, student = tiny_net(5, 1, seed=1), tiny_net(5, 1, seed=2)
    d = build_distiller(KDConfig(alpha=1.0, temperature=4.0), student, teacher).train()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    _, losses = d.forward_train(Batch(x, y), epoch=1)
    with torch.no_grad():
        expected = kd_loss(student(x)[0], teacher(x)[0], 4.0)
    torch.testing.assert_close(losses["kd"], expected)


def test_teacher_gets_no_parameter_gradients_and_never_changes(tiny_net):
    teacher, student = tiny_net(5, 1, seed=1), tiny_net(5, 1, seed=2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = build_distiller(OracleConfig(gamma=0.5), student, teacher).train()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1, momentum=0.9)
    assert not any(p is q for p in d.trainable_parameters() for q in teacher.parameters())
    for _ in range(3):
        x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
        _, losses = d.forward_train(Batch(x, y), epoch=1)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # BN running stats included: eval mode throughout
        assert torch.equal(v, before[k]), k
    assert any(p.grad is not None for p in student.parameters())
    assert "teacher.conv.weight" not in d.trainable_state_dict()


def test_ce_method_uses_no_teacher(tiny_net):
    student = tiny_net(5, 1)
    d = build_distiller(CEConfig(ce_weight=1.0), student, None).train()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    logits, losses = d.forward_train(Batch(x, y), epoch=1)
    assert set(losses) == {"ce"}
    torch.testing.assert_close(losses["ce"], F.cross_entropy(logits, y))
