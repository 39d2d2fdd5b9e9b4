"""Neuron Selectivity Transfer (Huang & Wang 2017), its loss checked on numbers: each channel's map flattened and
L2-normalised, MMD² = mean k(t,t) + mean k(s,s) − 2·mean k(s,t) with k(a, b) = (aᵀb)², summed over stage pairs,
times `weight`; the Gram-matrix form equals the reference's (B, C, C, H·W) broadcast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oracle_kd.core.batch import Batch
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller
from oracle_kd.methods.nst import NSTConfig, nst_loss, poly_mmd
from oracle_kd.models import build_model


def maps(*channels: list[float]) -> torch.Tensor:
    """One sample whose channels are the given maps, as (1, C, 1, W)."""
    return torch.tensor(channels, dtype=torch.float64).reshape(1, len(channels), 1, -1)


def direct_mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """The formula written out, in float64, the way the reference computes it: every (channel, channel) kernel
    value as a sum over positions of a broadcast product, then the three means."""
    s = F.normalize(f_s.double().flatten(2), dim=2)
    t = F.normalize(f_t.double().flatten(2), dim=2)

    def mean_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2).mean()  # (B, C_b, C_a, HW) summed over HW

    return mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)


def test_the_mmd_by_hand():
    # teacher: one channel, (3, 0) -> (1, 0). Student: (1, 0) and (0, 2) -> e1, e2.
    # k(t,t) = 1; k(s,s) = [[1, 0], [0, 1]], mean 1/2; k(s,t) = 1 and 0, mean 1/2: MMD² = 1 + 1/2 − 1 = 1/2
    assert poly_mmd(maps([1.0, 0.0], [0.0, 2.0]), maps([3.0, 0.0])).item() == pytest.approx(0.5, abs=1e-15)
    # student: one channel (1, 1) -> (1, 1)/√2 at 45° to the teacher's: k(s,t) = cos² 45° = 1/2; MMD² = 1 + 1 − 1
    assert poly_mmd(maps([1.0, 1.0]), maps([3.0, 0.0])).item() == pytest.approx(1.0, abs=1e-15)
    # the same directions in the same proportions, in any scale or order: the same distribution, MMD² = 0
    same = poly_mmd(maps([0.0, 5.0], [2.0, 1.0], [2.0, 1.0]), maps([4.0, 2.0], [0.0, 3.0], [4.0, 2.0]))
    assert same.item() == pytest.approx(0.0, abs=1e-15)
    # summed over stage pairs
    pair = (maps([1.0, 0.0], [0.0, 2.0]), maps([3.0, 0.0]))
    assert nst_loss([pair[0], pair[0]], [pair[1], pair[1]]).item() == pytest.approx(1.0, abs=1e-15)


def test_the_gram_form_equals_the_reference_formula_in_float64():
    g = torch.Generator().manual_seed(0)
    # channel products (C_s·C_t <= HW²) in the first two, position products in the third, mixed in the fourth
    for s_shape, t_shape in [((3, 4, 2, 3), (3, 5, 2, 3)), ((2, 7, 3, 3), (2, 2, 3, 3)), ((2, 6, 1, 2), (2, 9, 1, 2)),
                             ((2, 1, 2, 2), (2, 9, 2, 2))]:
        f_s = torch.relu(torch.randn(*s_shape, generator=g, dtype=torch.float64))  # post-ReLU maps, as distilled
        f_t = torch.relu(torch.randn(*t_shape, generator=g, dtype=torch.float64))
        assert poly_mmd(f_s, f_t).item() == pytest.approx(direct_mmd(f_s, f_t).item(), abs=1e-14)


def test_a_larger_map_is_pooled_to_the_smaller():
    g = torch.Generator().manual_seed(1)
    big, small = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.rand(2, 5, 2, 2, generator=g,
                                                                                       dtype=torch.float64)
    pooled = F.avg_pool2d(big, 2)  # adaptive pooling from 4x4 to 2x2 is a 2x2 average
    assert nst_loss([big], [small]).item() == pytest.approx(direct_mmd(pooled, small).item(), abs=1e-14)
    assert nst_loss([small], [big]).item() == pytest.approx(direct_mmd(small, pooled).item(), abs=1e-14)
    with pytest.raises(ValueError, match="same, non-zero number"):
        nst_loss([big], [])


def test_the_teachers_self_term_is_a_constant():
    # the reference detaches mean k(t,t): a teacher map that required a gradient would get only the cross term's
    g = torch.Generator().manual_seed(2)
    f_s = torch.rand(2, 3, 2, 2, generator=g, dtype=torch.float64)
    f_t = torch.rand(2, 4, 2, 2, generator=g, dtype=torch.float64).requires_grad_()
    got = torch.autograd.grad(poly_mmd(f_s, f_t), f_t)[0]
    k_st = F.normalize(f_s.flatten(2), dim=2) @ F.normalize(f_t.flatten(2), dim=2).transpose(1, 2)
    want = torch.autograd.grad(-2 * k_st.pow(2).mean(), f_t)[0]
    assert torch.allclose(got, want, rtol=0, atol=1e-14)


def _pair():
    teacher = build_model("resnet14", 5, 1, image_size=8)
    student = build_model("resnet8", 5, 1, image_size=8)
    return student, teacher


def test_the_method_scales_the_term_by_weight():
    torch.manual_seed(0)
    student, teacher = _pair()
    x, y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 3])
    d = build_distiller(NSTConfig(weight=7.0), student, teacher, (1, 8, 8))
    logits, terms = d.forward_train(Batch(x, y), epoch=1)
    with torch.no_grad():
        _, f_t = teacher(x)
    _, f_s = student(x)
    assert set(terms) == {"ce", "nst"} and NSTConfig().weight == 50.0
    assert terms["nst"].item() == pytest.approx(7.0 * nst_loss(f_s.stages[1:], f_t.stages[1:]).item(), rel=1e-6)
    assert math.isfinite(terms["nst"].item()) and terms["nst"].item() > 0


def test_a_pair_with_different_stage_counts_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="^method=nst: .*teacher has 2 stages and the student 3"):
        build_distiller(NSTConfig(), build_model("resnet8", 5, 3, image_size=8), build_model("mlp16", 5, 3, image_size=8),
                        (3, 8, 8))
