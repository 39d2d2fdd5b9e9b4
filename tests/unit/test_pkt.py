"""Probabilistic Knowledge Transfer (Passalis & Tefas 2018), its loss checked on numbers: P_ij = row-normalised
(cos(x_i, x_j) + 1)/2 per network, PKT = mean over the B² entries of P^t·log((P^t + eps)/(P^s + eps)), times
`weight`."""

from __future__ import annotations

import math

import pytest
import torch

from oracle_kd.core.batch import Batch
from oracle_kd.methods import build_distiller
from oracle_kd.methods.pkt import PKTConfig, conditional_probabilities, pkt_loss


def direct_pkt(s: torch.Tensor, t: torch.Tensor, eps: float) -> float:
    """The reference's formula entry by entry in Python floats (double precision)."""
    def probs(x: torch.Tensor) -> list[list[float]]:
        rows = [[float(v) for v in r] for r in x]
        unit = [[v / (math.sqrt(sum(u * u for u in r)) + eps) for v in r] for r in rows]
        k = [[(sum(a * b for a, b in zip(ui, uj)) + 1) / 2 for uj in unit] for ui in unit]
        return [[v / sum(r) for v in r] for r in k]

    p_s, p_t = probs(s), probs(t)
    n = len(p_s)
    return sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(n) for j in range(n)) / n ** 2


def test_the_probabilities_and_the_loss_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # orthogonal: cos 0 -> kernel 1/2
    t = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)  # parallel: cos 1 -> kernel 1
    # student kernel [[1, 1/2], [1/2, 1]] -> rows [2/3, 1/3]; teacher kernel all 1 -> rows [1/2, 1/2]
    want_s = torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]], dtype=torch.float64)
    assert torch.allclose(conditional_probabilities(s, eps=0.0), want_s, rtol=0, atol=1e-15)
    # mean over 4 entries: 2 rows x (1/2·log((1/2)/(2/3)) + 1/2·log((1/2)/(1/3))) / 4 = log(9/8) / 4
    assert pkt_loss(s, t, eps=0.0).item() == pytest.approx(math.log(9 / 8) / 4, abs=1e-15)


def test_the_loss_equals_the_formula_entry_by_entry():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    for eps in (1e-7, 1e-2):  # the default, and one large enough that its placement shows
        assert pkt_loss(s, t, eps).item() == pytest.approx(direct_pkt(s, t, eps), rel=1e-12)


def test_only_the_directions_matter():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = torch.randn(6, 9, generator=g, dtype=torch.float64)
    scales = torch.rand(6, 1, generator=g, dtype=torch.float64) * 4 + 0.5  # a positive scale per sample
    base = pkt_loss(s, t, eps=0.0).item()
    assert pkt_loss(scales * s, 3.0 * t, eps=0.0).item() == pytest.approx(base, rel=1e-12)
    assert pkt_loss(2.5 * s, s, eps=0.0).item() == pytest.approx(0.0, abs=1e-15)
    assert pkt_loss(-s, t, eps=0.0).item() == pytest.approx(base, rel=1e-12)  # −1 for all keeps every cosine
    flipped = s.clone()
    flipped[0] = -flipped[0]  # −1 for one sample is not a positive scale: its cosines change sign
    assert pkt_loss(flipped, t, eps=0.0).item() != pytest.approx(base, rel=1e-3)
    # with the default eps the scale enters only as eps/‖x‖ in x/(‖x‖ + eps): rows of norm >= 0.5 move the unit
    # vectors by at most 2e-7 (relative), so the loss moves by far less than 1e-5 of itself
    s1 = s / s.norm(dim=1, keepdim=True) * (1 + torch.rand(6, 1, generator=g, dtype=torch.float64))
    assert pkt_loss(10.0 * s1, t).item() == pytest.approx(pkt_loss(s1, t).item(), rel=1e-5)


def test_a_nan_feature_counts_as_zero():
    s = torch.tensor([[1.0, float("nan")], [0.0, 1.0]], dtype=torch.float64)
    got = conditional_probabilities(s)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, conditional_probabilities(torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)))


def test_the_method_scales_the_term_by_weight(tiny_net):
    student, teacher = tiny_net(seed=0), tiny_net(seed=1)
    x, y = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 3, 4])
    d = build_distiller(PKTConfig(weight=7.0), student, teacher, (1, 8, 8))
    logits, terms = d.forward_train(Batch(x, y), epoch=1)
    with torch.no_grad():
        _, f_t = teacher(x)
    _, f_s = student(x)
    assert set(terms) == {"ce", "pkt"} and (PKTConfig().weight, PKTConfig().eps) == (30000.0, 1e-7)
    assert terms["pkt"].item() == pytest.approx(7.0 * pkt_loss(f_s.pooled, f_t.pooled).item(), rel=1e-6)
