"""Relational Knowledge Distillation (Park et al. 2019), its two losses checked on numbers: distances over their
mean (off the diagonal), cosines of the angle at each vertex, smooth L1 (δ = 1) averaged over the B² and B³
entries; the method returns weight·distance_weight·L_D and weight·angle_weight·L_A."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from oracle_kd.core.batch import Batch
from oracle_kd.methods import build_distiller
from oracle_kd.methods.rkd import RKDConfig, angles, normalized_distances, rkd_terms


def pts(*xy: tuple[float, float]) -> torch.Tensor:
    return torch.tensor(xy, dtype=torch.float64)


RIGHT = pts((0, 0), (3, 0), (0, 4))  # sides 3, 4, 5; cosines 0 at (0,0), 3/5 at (3,0), 4/5 at (0,4)
EQUILATERAL = pts((0, 0), (2, 0), (1, math.sqrt(3)))  # sides 2; every cosine 1/2


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def direct_rkd(s: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """Both losses entry by entry in Python floats (not squared distances; no pair coincides here)."""
    def dist(x: torch.Tensor) -> list[list[float]]:
        n = len(x)
        d = [[math.dist(x[i].tolist(), x[j].tolist()) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[v / mean for v in row] for row in d]

    def cos_at(x: torch.Tensor, i: int, j: int, k: int) -> float:
        if i in (j, k):
            return 0.0
        a, b = (x[j] - x[i]).tolist(), (x[k] - x[i]).tolist()
        return sum(p * q for p, q in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))

    n = len(s)
    d_s, d_t = dist(s), dist(t)
    loss_d = sum(huber(d_s[i][j] - d_t[i][j]) for i in range(n) for j in range(n)) / n ** 2
    loss_a = sum(huber(cos_at(s, *ijk) - cos_at(t, *ijk)) for ijk in itertools.product(range(n), repeat=3)) / n ** 3
    return loss_d, loss_a


def test_distances_and_angles_of_two_triangles_by_hand():
    # distances 3, 4, 5 (each twice) have mean 4 -> 3/4, 1, 5/4; the equilateral triangle's are all 1
    assert torch.allclose(normalized_distances(RIGHT), torch.tensor(
        [[0, 3 / 4, 1], [3 / 4, 0, 5 / 4], [1, 5 / 4, 0]], dtype=torch.float64), rtol=0, atol=1e-15)
    a = angles(RIGHT)
    assert [a[0, 1, 2].item(), a[1, 0, 2].item(), a[2, 0, 1].item()] == pytest.approx([0, 3 / 5, 4 / 5], abs=1e-15)
    assert a[0, 1, 1].item() == pytest.approx(1.0) and a[0, 0, 1].item() == 0.0  # same edge; a zero edge
    loss_d, loss_a = rkd_terms(RIGHT, EQUILATERAL)
    # L_D: four entries differ by ±1/4 (|x| < 1: x²/2), over 9 entries: 4 · (1/32) / 9 = 1/72
    assert loss_d.item() == pytest.approx(1 / 72, abs=1e-15)
    # L_A: at each vertex the two ordered (j, k) with j ≠ k differ, by −1/2, 1/10, 3/10; over 27 entries
    assert loss_a.item() == pytest.approx(2 * 0.5 * (0.25 + 0.01 + 0.09) / 27, abs=1e-15)


def test_the_losses_equal_the_formulas_entry_by_entry():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g, dtype=torch.float64), 3 * torch.randn(5, 6, generator=g, dtype=torch.float64)
    got = [v.item() for v in rkd_terms(s, t)]
    assert got == pytest.approx(direct_rkd(s, t), rel=1e-12)
    far = t.clone()
    far[0] += 50  # an outlier: normalised distances differ by more than 1, the Huber loss's linear branch
    assert (normalized_distances(s) - normalized_distances(far)).abs().max() > 1
    assert [v.item() for v in rkd_terms(s, far)] == pytest.approx(direct_rkd(s, far), rel=1e-12)


def test_the_relations_ignore_scale_rotation_and_translation():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))  # an orthogonal map
    moved = 2.7 * s @ q + torch.randn(1, 4, generator=g, dtype=torch.float64)
    base = [v.item() for v in rkd_terms(s, t)]
    # float64 rounding of O(1) quantities; eps = 1e-12 only clamps squared distances that are far larger here
    assert [v.item() for v in rkd_terms(moved, t)] == pytest.approx(base, abs=1e-12)
    assert [v.item() for v in rkd_terms(s, 0.1 * t)] == pytest.approx(base, abs=1e-12)
    assert [v.item() for v in rkd_terms(moved, s)] == pytest.approx([0.0, 0.0], abs=1e-12)  # the same geometry


def test_squared_distances_and_a_single_sample():
    # squared: 9, 16, 25 over their mean 50/3
    want = torch.tensor([[0, 27 / 50, 48 / 50], [27 / 50, 0, 75 / 50], [48 / 50, 75 / 50, 0]], dtype=torch.float64)
    assert torch.allclose(normalized_distances(RIGHT, squared=True), want, rtol=0, atol=1e-15)
    one = [v.item() for v in rkd_terms(torch.ones(1, 3), torch.ones(1, 2))]  # the reference's mean of nothing: NaN
    assert one == [0.0, 0.0]


def test_the_method_returns_both_weighted_terms(tiny_net):
    student, teacher = tiny_net(seed=0), tiny_net(seed=1)
    x, y = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 3, 4])
    cfg = RKDConfig(weight=2.0, distance_weight=3.0, angle_weight=5.0)
    d = build_distiller(cfg, student, teacher, (1, 8, 8))
    logits, terms = d.forward_train(Batch(x, y), epoch=1)
    with torch.no_grad():
        _, f_t = teacher(x)
    _, f_s = student(x)
    loss_d, loss_a = rkd_terms(f_s.pooled, f_t.pooled)
    assert set(terms) == {"ce", "distance", "angle"}
    assert terms["distance"].item() == pytest.approx(6.0 * loss_d.item(), rel=1e-6)
    assert terms["angle"].item() == pytest.approx(10.0 * loss_a.item(), rel=1e-6)
    defaults = RKDConfig()
    assert (defaults.weight, defaults.distance_weight, defaults.angle_weight, defaults.eps, defaults.squared) == (
        1.0, 25.0, 50.0, 1e-12, False)
