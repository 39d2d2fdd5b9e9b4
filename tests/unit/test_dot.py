"""DOT (Zhao et al., ICCV 2023) checked on numbers: two steps of the two-momentum update against a hand
computation, its state surviving a save/load, and the recipe's momenta 0.9 ∓ δ."""

from __future__ import annotations

import contextlib
import copy as copy_module

import pytest
import torch
from torch import nn

from oracle_kd.config import TrainConfig
from oracle_kd.core.batch import Batch
from oracle_kd.engine.dot import DOT
from oracle_kd.engine.step import make_optimizer, train_step
from oracle_kd.errors import ConfigError

LR, WD, MOM, MOM_KD = 0.1, 0.01, 0.825, 0.975
P, Q, R = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 3.0]), torch.tensor([2.0, -1.0])


def params() -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """a: in both terms; b: distillation only (a regressor); c: task only."""
    g = torch.Generator().manual_seed(0)
    return tuple(nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64)) for n in (3, 2, 2))


def losses(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
    """ce = ½‖a − p‖² + ½‖c‖² (∂a = a − p, ∂c = c); kd = ½‖a − q‖² + ½‖b − r‖² (∂a = a − q, ∂b = b − r)."""
    p, q, r = (t.double() for t in (P, Q, R))
    return {"ce": 0.5 * ((a - p) ** 2).sum() + 0.5 * (c ** 2).sum(),
            "kd": 0.5 * ((a - q) ** 2).sum() + 0.5 * ((b - r) ** 2).sum()}


def by_hand(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The update written out: task buffers first (momentum MOM where a kd gradient exists, the mean where
    not), then the kd buffers on the gradients taken before the task update; a buffer starts as its first
    gradient, and a kd-only parameter takes weight decay only from its second step on."""
    p, q, r = (t.double() for t in (P, Q, R))
    mean = (MOM + MOM_KD) / 2
    buf_a = buf_c = kbuf_a = kbuf_b = None
    for _ in range(steps):
        g_a_ce, g_c, g_a_kd, g_b = a - p, c, a - q, b - r
        d_a, d_c = g_a_ce + WD * a, g_c + WD * c
        buf_a = d_a if buf_a is None else MOM * buf_a + d_a
        buf_c = d_c if buf_c is None else mean * buf_c + d_c
        a, c = a - LR * buf_a, c - LR * buf_c
        kbuf_a = g_a_kd if kbuf_a is None else MOM_KD * kbuf_a + g_a_kd
        kbuf_b = g_b if kbuf_b is None else mean * kbuf_b + (g_b + WD * b)
        a, b = a - LR * kbuf_a, b - LR * kbuf_b
    return [a, b, c]


def dot_steps(opt: DOT, ps: tuple[nn.Parameter, ...], steps: int) -> None:
    for _ in range(steps):
        opt.backward_step(losses(*ps))


def test_two_dot_steps_equal_the_hand_computed_two_momentum_update():
    ps = params()
    expected = by_hand(*(p.detach().clone() for p in ps), steps=2)
    dot_steps(DOT(ps, lr=LR, momentum=MOM, momentum_kd=MOM_KD, weight_decay=WD), ps, 2)
    for got, want in zip(ps, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-14, atol=1e-14)  # float64: a few roundings apart


def test_both_momentum_buffers_survive_a_state_dict_round_trip():
    """What last.pt stores: a fresh DOT loaded from the state continues bit for bit."""
    ps, copy = params(), params()
    opt = DOT(ps, lr=LR, momentum=MOM, momentum_kd=MOM_KD, weight_decay=WD)
    dot_steps(opt, ps, 2)
    state = copy_module.deepcopy(opt.state_dict())  # what torch.save would write: not the live buffers
    assert {k for s in state["state"].values() for k in s} == {"momentum_buffer", "momentum_kd_buffer"}
    with torch.no_grad():
        for c, p in zip(copy, ps):
            c.copy_(p)
    resumed = DOT(copy, lr=LR, momentum=MOM, momentum_kd=MOM_KD, weight_decay=WD)
    resumed.load_state_dict(state)
    dot_steps(opt, ps, 3)
    dot_steps(resumed, copy, 3)
    assert all(torch.equal(a, b) for a, b in zip(ps, copy))


def test_the_recipe_gives_momenta_momentum_minus_and_plus_delta():
    opt = make_optimizer(params(), TrainConfig(optimizer="dot", momentum=0.9, dot_delta=0.075, lr=LR))
    group = opt.param_groups[0]
    assert isinstance(opt, DOT)
    assert (group["momentum"], group["momentum_kd"]) == pytest.approx((0.825, 0.975), abs=1e-15)
    assert type(make_optimizer(params(), TrainConfig())) is torch.optim.SGD  # the default is unchanged


def test_train_step_takes_the_optimizers_own_step_and_needs_a_task_term():
    ps = params()
    opt = DOT(ps, lr=LR, momentum=MOM, momentum_kd=MOM_KD, weight_decay=WD)
    expected = by_hand(*(p.detach().clone() for p in ps), steps=1)

    def forward(batch: Batch, epoch: int, teacher_out: object = None):
        return batch.x, losses(*ps)

    batch = Batch(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    _, _, total = train_step(forward, opt, batch, 1, contextlib.nullcontext())
    assert all(torch.allclose(a, b, rtol=1e-14, atol=1e-14) for a, b in zip(ps, expected))
    assert total.item() > 0

    def ce_only(batch: Batch, epoch: int, teacher_out: object = None):
        return batch.x, {"ce": losses(*ps)["ce"]}

    with pytest.raises(ConfigError, match="task term 'ce' apart from the distillation terms"):
        train_step(ce_only, opt, batch, 1, contextlib.nullcontext())
