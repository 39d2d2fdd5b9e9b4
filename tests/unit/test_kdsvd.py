"""KD-SVD (Lee et al. 2018) as mdistiller computes it, checked on numbers: right singular vectors of each stage map
viewed as (C·H) × W, the student's aligned to the teacher's by the largest |cosine|, RBF exp(−(v_l[a] − v_{l−1}[b])²/8)
between consecutive stages, Σ (R^s − R^t)² / B; the teacher's sign made canonical; NaN gradients zeroed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oracle_kd.core.batch import Batch
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller
from oracle_kd.methods.kdsvd import KDSVDConfig, align, canonical_sign, kdsvd_loss, right_singular_vectors
from oracle_kd.models import build_model


def as_map(*rows: list[float]) -> torch.Tensor:
    """One sample with one channel whose (H, W) map is the given matrix: the (C·H) × W matrix is the matrix."""
    return torch.tensor(rows, dtype=torch.float64).reshape(1, 1, len(rows), -1)


DIAG_31 = as_map([3.0, 0.0], [0.0, 1.0])  # V = I, σ = (3, 1)
DIAG_13 = as_map([1.0, 0.0], [0.0, 3.0])  # leading v = (0, 1)
ROTATED = as_map([1.72, 0.96], [0.96, 2.28])  # = 3·v1v1ᵀ + v2v2ᵀ, v1 = (0.6, 0.8), v2 = (−0.8, 0.6)


def test_singular_vectors_of_known_matrices():
    v, s = right_singular_vectors(DIAG_31, 4)  # asks for 4, a 2 x 2 matrix has 2
    assert v.shape == (1, 2, 2) and torch.allclose(v.abs()[0], torch.eye(2, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(s, torch.tensor([[3.0, 1.0]], dtype=torch.float64) / math.sqrt(10), atol=1e-15)
    v, s = right_singular_vectors(ROTATED, 1)
    assert torch.allclose(canonical_sign(v)[0, :, 0], torch.tensor([0.6, 0.8], dtype=torch.float64), atol=1e-14)
    assert s.item() == pytest.approx(1.0)  # one singular value, normalised: k = 1 scales nothing


def test_alignment_picks_the_closest_student_vector_with_the_teachers_sign():
    v_s = torch.tensor([[[0.6, -0.8], [0.8, 0.6]]], dtype=torch.float64)  # columns (0.6, 0.8), (−0.8, 0.6)
    assert torch.allclose(align(v_s, torch.tensor([[[0.0], [1.0]]], dtype=torch.float64))[0, :, 0],
                          torch.tensor([0.6, 0.8], dtype=torch.float64))  # |cos| 0.8 beats 0.6
    assert torch.allclose(align(v_s, torch.tensor([[[1.0], [0.0]]], dtype=torch.float64))[0, :, 0],
                          torch.tensor([0.8, -0.6], dtype=torch.float64))  # cos −0.8 wins: flipped to agree
    # a tie (equal |cos|) sums the signed vectors, as the reference's mask does
    eye = torch.eye(2, dtype=torch.float64).unsqueeze(0)
    u = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64) / math.sqrt(2)  # cosines 1/√2 and −1/√2
    assert torch.equal(align(eye, u)[0, :, 0], torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_the_loss_of_two_stages_by_hand():
    # teacher stages: diag(3, 1) then diag(1, 3): v = (1, 0) then (0, 1). Student: diag(3, 1) then ROTATED:
    # aligned v = (1, 0) then (0.6, 0.8). k = 1: s = 1. R[a, b] = exp(−(v_1[a] − v_0[b])²/8).
    d_s = [(0.6 - 1) ** 2, 0.6 ** 2, (0.8 - 1) ** 2, 0.8 ** 2]
    d_t = [1.0, 0.0, 0.0, 1.0]
    want = sum((math.exp(-a / 8) - math.exp(-b / 8)) ** 2 for a, b in zip(d_s, d_t))  # batch of 1
    assert kdsvd_loss([DIAG_31, ROTATED], [DIAG_31, DIAG_13]).item() == pytest.approx(want, abs=1e-14)
    # one stage has no predecessor: nothing to compare
    assert kdsvd_loss([ROTATED], [DIAG_13]).item() == 0.0
    with pytest.raises(ValueError, match="same, non-zero number"):
        kdsvd_loss([ROTATED], [])


def svd_vectors(f: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n right singular vectors (columns) of a (C, H, W) map as a (C·H) × W matrix, and the first n
    singular values over their norm."""
    c, h, w = f.shape
    _, sv, vt = np.linalg.svd(f.reshape(c * h, w), full_matrices=False)
    return vt[:n].T, sv[:n] / np.linalg.norm(sv[:n])


def reference_in_numpy(g_s: list[torch.Tensor], g_t: list[torch.Tensor], k: int) -> float:
    """mdistiller's formula rewritten sample by sample with numpy's SVD in float64 (teacher signs canonical)."""
    total = 0.0
    batch = g_s[0].shape[0]
    for i in range(batch):
        before = None
        for f_s, f_t in zip(g_s, g_t):
            v_t, s_t = svd_vectors(f_t[i].numpy(), k)
            v_t = v_t * np.where(v_t.sum(axis=0) < 0, -1.0, 1.0)
            candidates, _ = svd_vectors(f_s[i].numpy(), k + 3)
            v_s = np.zeros_like(v_t)
            for c in range(v_t.shape[1]):
                cosines = candidates.T @ v_t[:, c]
                best = int(np.argmax(np.abs(cosines)))  # random maps: no ties
                v_s[:, c] = candidates[:, best] * np.sign(cosines[best])
            v_s, v_t = v_s * s_t, v_t * s_t
            if before is not None:
                for a in range(v_s.shape[0]):
                    for b in range(before[0].shape[0]):
                        for c in range(v_s.shape[1]):
                            r_s = math.exp(-(v_s[a, c] - before[0][b, c]) ** 2 / 8)
                            r_t = math.exp(-(v_t[a, c] - before[1][b, c]) ** 2 / 8)
                            total += (r_s - r_t) ** 2
            before = (v_s, v_t)
    return total / batch


@pytest.mark.parametrize("k", [1, 2])
def test_the_loss_equals_the_reference_formula_in_float64(k: int):
    g = torch.Generator().manual_seed(k)

    def relu_maps(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
        return [torch.relu(torch.randn(2, *s, generator=g, dtype=torch.float64)) + 0.1 for s in shapes]

    g_t = relu_maps((3, 3, 4), (4, 2, 3), (5, 2, 2))  # widths 4, 3, 2: rows of each RBF differ in number
    g_s = relu_maps((2, 3, 4), (3, 2, 3), (2, 2, 2))
    assert kdsvd_loss(g_s, g_t, k).item() == pytest.approx(reference_in_numpy(g_s, g_t, k), rel=1e-10)


def test_the_teachers_sign_is_canonical():
    v = torch.tensor([[[-0.6], [-0.8]], [[0.6], [-0.8]]], dtype=torch.float64)
    assert torch.equal(canonical_sign(v), torch.tensor([[[0.6], [0.8]], [[-0.6], [0.8]]], dtype=torch.float64))
    assert torch.equal(canonical_sign(-v), canonical_sign(v))  # whichever sign the SVD library returns


def test_a_rank_deficient_map_adds_no_nan_gradient():
    g = torch.Generator().manual_seed(3)
    g_t = [torch.rand(2, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    g_s = [torch.rand(2, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    g_s[1][1] = 0.0  # sample 1's second stage is all zeros: repeated singular values 0
    g_s = [f.requires_grad_() for f in g_s]
    loss = kdsvd_loss(g_s, g_t)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(f.grad).all() for f in g_s)
    assert g_s[1].grad[1].abs().sum() == 0 and g_s[1].grad[0].abs().sum() > 0  # only that sample's is dropped
    raw = g_s[1].detach().reshape(2, 6, 3).requires_grad_()  # what the reference's SVD gives for it: NaN
    torch.linalg.svd(raw, full_matrices=False)[2][:, :1].sum().backward()
    assert torch.isnan(raw.grad[1]).any()


def test_maps_of_different_sizes_are_pooled():
    g = torch.Generator().manual_seed(4)
    big = [torch.rand(2, 2, n, n, generator=g, dtype=torch.float64) for n in (4, 2)]
    small = [torch.rand(2, 3, n, n, generator=g, dtype=torch.float64) for n in (2, 1)]
    pooled = [torch.nn.functional.avg_pool2d(f, 2) for f in big]
    assert kdsvd_loss(big, small).item() == pytest.approx(kdsvd_loss(pooled, small).item(), abs=1e-15)


def _pair():
    torch.manual_seed(0)
    return build_model("resnet8", 5, 1, image_size=8), build_model("resnet14", 5, 1, image_size=8)


def test_the_method_scales_the_term_by_weight():
    student, teacher = _pair()
    x, y = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 1, 2])
    d = build_distiller(KDSVDConfig(weight=7.0), student, teacher, (1, 8, 8))
    logits, terms = d.forward_train(Batch(x, y), epoch=1)
    with torch.no_grad():
        _, f_t = teacher(x)
    _, f_s = student(x)
    assert set(terms) == {"ce", "kdsvd"} and (KDSVDConfig().weight, KDSVDConfig().k) == (1.0, 1)
    assert terms["kdsvd"].item() == pytest.approx(7.0 * kdsvd_loss(f_s.stages[1:], f_t.stages[1:]).item(), rel=1e-5)
    assert terms["kdsvd"].item() > 0


def test_a_pair_with_different_stage_counts_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="^method=kdsvd: .*teacher has 2 stages and the student 3"):
        build_distiller(KDSVDConfig(), build_model("resnet8", 5, 3, image_size=8),
                        build_model("mlp16", 5, 3, image_size=8), (3, 8, 8))
