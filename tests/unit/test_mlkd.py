"""MLKD (Jin et al., CVPR 2023) checked on numbers: its KD, class- and batch-correlation terms against hand
computations, the official code's quirks (masks that only scale, T = 2 and 6 strong terms on weak logits), and
the strong view (RandAugment + Cutout) drawn by the batch key."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.methods import tiny_data
from oracle_kd.core.batch import Batch
from oracle_kd.data.strong import CUTOUT_FILL, cutout, strong_view
from oracle_kd.methods import build_distiller
from oracle_kd.methods.mlkd import MLKDConfig, batch_correlation, class_correlation, masked_fractions, mlkd_terms
from oracle_kd.models import build_model

S = [[1.0, -0.5, 0.2, 0.0], [0.3, 0.9, -1.2, 0.4], [-0.7, 0.1, 0.5, 1.5]]
T_ = [[2.0, 0.0, -1.0, 0.5], [0.0, 1.5, 0.2, -0.3], [0.4, -0.2, 0.1, 2.5]]
S2 = [[0.2, 0.1, -0.3, 0.6], [1.1, -0.4, 0.0, 0.2], [-0.1, 0.3, 0.9, -0.8]]  # strong view
T2 = [[1.0, 0.5, -0.5, 0.0], [0.3, 0.2, 0.7, -1.0], [0.0, 0.9, -0.4, 1.2]]


def softmax(row: list[float], temp: float) -> list[float]:
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def kd(s: list[list[float]], t: list[list[float]], temp: float) -> float:
    total = 0.0
    for rs, rt in zip(s, t):
        ps, pt = softmax(rs, temp), softmax(rt, temp)
        total += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    return temp * temp * total / len(s)


def gram(p: list[list[float]], by_class: bool) -> list[list[float]]:
    if by_class:  # pᵀp: C×C
        c = len(p[0])
        return [[sum(row[i] * row[j] for row in p) for j in range(c)] for i in range(c)]
    return [[sum(a * b for a, b in zip(ri, rj)) for rj in p] for ri in p]  # p pᵀ: B×B


def correlation(s: list[list[float]], t: list[list[float]], temp: float, by_class: bool) -> float:
    gs = gram([softmax(r, temp) for r in s], by_class)
    gt = gram([softmax(r, temp) for r in t], by_class)
    diff = sum((a - b) ** 2 for ra, rb in zip(gt, gs) for a, b in zip(ra, rb))
    return diff / (len(s[0]) if by_class else len(s))


def tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_the_correlation_terms_equal_hand_computations():
    for temp in (4.0, 2.0):
        assert class_correlation(tensor(S), tensor(T_), temp).item() == pytest.approx(correlation(S, T_, temp, True),
                                                                                    rel=1e-12)
        assert batch_correlation(tensor(S), tensor(T_), temp).item() == pytest.approx(correlation(S, T_, temp, False),
                                                                                    rel=1e-12)


def test_the_masks_scale_by_the_fraction_at_or_below_the_median():
    """Teacher confidences of the 3 samples: the median one and the lower are masked (2/3); the class sums of 4
    classes: the two at or below the interpolated median (1/2)."""
    f_b, f_c = masked_fractions(tensor(T_))
    conf = sorted(max(softmax(r, 1.0)) for r in T_)
    assert f_b.item() == pytest.approx(sum(c <= conf[1] for c in conf) / 3)
    sums = [sum(softmax(r, 1.0)[k] for r in T_) for k in range(4)]
    median = sorted(sums)[1] / 2 + sorted(sums)[2] / 2
    assert f_c.item() == pytest.approx(sum(v <= median for v in sums) / 4)


def test_the_terms_follow_the_official_code_quirks_included():
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    f_b, f_c = (v.item() for v in masked_fractions(tensor(T_)))
    got = mlkd_terms(tensor(S), tensor(T_), tensor(S2), tensor(T2), 4.0)
    kd_weak = f_b * sum(kd(S, T_, t) for t in temps)
    kd_strong = kd(S2, T2, 4.0) + kd(S2, T2, 3.0) + kd(S2, T2, 5.0) + kd(S, T_, 2.0) + kd(S, T_, 6.0)  # 2, 6: weak
    assert got["kd"].item() == pytest.approx(kd_weak + kd_strong, rel=1e-12)
    assert got["cc"].item() == pytest.approx(f_c * sum(correlation(S, T_, t, True) for t in temps), rel=1e-12)
    assert got["bc"].item() == pytest.approx(f_b * sum(correlation(S, T_, t, False) for t in temps), rel=1e-12)


def test_the_method_weights_its_terms_and_reads_both_views():
    torch.manual_seed(0)
    teacher, student = build_model("resnet8", 10, 1, image_size=8), build_model("resnet8", 10, 1, image_size=8)
    d = build_distiller(MLKDConfig(), student, teacher, data=tiny_data((1, 8, 8), 10)).train()
    x, strong, y = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8), torch.arange(6)
    logits, losses = d.forward_train(Batch(x, y, torch.arange(6), 0, {"strong": strong}), 1)
    assert set(losses) == {"ce", "kd", "cc", "bc"} and all(v.isfinite() for v in losses.values())
    with pytest.raises(ValueError, match="strong view"):
        d.forward_train(Batch(x, y), 1)


def test_the_strong_view_is_drawn_by_the_key_and_differs_from_the_batch():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    a, b = strong_view(images, 7, pad=4, flip=True), strong_view(images, 7, pad=4, flip=True)
    assert a.dtype == torch.uint8 and a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, strong_view(images, 8, pad=4, flip=True)) and not torch.equal(a, images)


def test_cutout_fills_a_clipped_square_including_its_far_edge():
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    out = cutout(img, 4.0, 1.0, 6.0)  # corner (max(0, 1 - 2), max(0, 6 - 2)) = (0, 4), far edge x 4, y 8 → 7
    filled = (out != 0).any(dim=0)
    assert filled[4:8, 0:5].all() and filled.sum() == 4 * 5
    assert out[:, 5, 2].tolist() == list(CUTOUT_FILL)


@pytest.mark.parametrize("channels", [1, 3])
def test_every_operation_takes_both_ends_of_its_range(channels):
    from oracle_kd.data.strong import OPS

    img = torch.randint(0, 256, (channels, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for name, op, lo, hi in OPS:
        for v in (lo, hi):
            out = op(img, v)
            assert out.dtype == torch.uint8 and out.shape == img.shape, name
