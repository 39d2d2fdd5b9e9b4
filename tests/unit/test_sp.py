"""Similarity-Preserving KD (Tung & Mori 2019), its loss checked on numbers: Ĝ = row-normalised Q·Qᵀ and
L_SP = ‖Ĝ_s − Ĝ_t‖_F² / B², summed over map pairs, times beta."""

from __future__ import annotations

import math

import pytest
import torch

from oracle_kd.core.batch import Batch
from oracle_kd.methods.sp import SPConfig, similarity, sp_loss


def test_the_similarity_matrix_by_hand():
    # Q rows (1, 0) and (1, 1): G = [[1, 1], [1, 2]]; rows over their norms √2 and √5
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).reshape(2, 2, 1, 1)
    want = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]])
    assert torch.allclose(similarity(q), want, atol=1e-7)


def test_the_loss_by_hand():
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).reshape(2, 1, 1, 2)  # Ĝ_t as above
    s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]).reshape(2, 3, 1, 1)  # orthogonal rows: Ĝ_s = I
    r2, r5 = 1 / math.sqrt(2), 1 / math.sqrt(5)
    want = ((1 - r2) ** 2 + r2 ** 2 + r5 ** 2 + (1 - 2 * r5) ** 2) / 4  # Σ of squared differences / B²
    assert sp_loss([s], [t]).item() == pytest.approx(want, rel=1e-6)
    assert sp_loss([s, s], [t, t]).item() == pytest.approx(2 * want, rel=1e-6)  # summed over pairs


def test_only_the_batch_similarities_matter():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 8, 4, 4, generator=g)
    assert sp_loss([3.0 * f], [f]).item() == pytest.approx(0.0, abs=1e-10)  # a scale changes no row direction
    other = torch.randn(6, 32, 2, 2, generator=g)  # other width and size: still a 6 x 6 comparison
    assert sp_loss([other], [f]).item() > 0
    with pytest.raises(ValueError, match="same, non-zero number"):
        sp_loss([f], [])


def test_the_method_scales_the_term_by_beta(tiny_net):
    from oracle_kd.methods import build_distiller

    student, teacher = tiny_net(seed=0), tiny_net(seed=1)
    x, y = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 3, 4])
    d = build_distiller(SPConfig(beta=7.0), student, teacher, (1, 8, 8))
    logits, terms = d.forward_train(Batch(x, y), epoch=1)
    with torch.no_grad():
        _, f_t = teacher(x)
    _, f_s = student(x)
    assert set(terms) == {"ce", "sp"}
    assert terms["sp"].item() == pytest.approx(7.0 * sp_loss(f_s.stages[-1:], f_t.stages[-1:]).item(), rel=1e-6)
