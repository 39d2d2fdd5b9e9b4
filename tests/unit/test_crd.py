"""CRD (Tian et al., ICLR 2020) checked on numbers: the NCE objective and the bank update on a tiny bank
against a hand computation, the negatives' distribution, and embeddings sized by a shape probe."""

from __future__ import annotations

import math

import pytest
import torch

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.methods import build_distiller
from oracle_kd.methods.crd import ContrastMemory, CRDConfig, draw_contrast, nce_loss
from oracle_kd.models import build_model

N, T, M = 6, 0.5, 0.5
EPS = 1e-7


def unit(*v: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


BANK_S = [unit(1, 0), unit(0, 1), unit(1, 1), unit(-1, 0), unit(1, -2), unit(3, 1)]
BANK_T = [unit(0, 1), unit(1, 1), unit(-1, 2), unit(1, 0), unit(2, 1), unit(-1, -1)]
S = [unit(1, 2), unit(-1, 1)]  # the student's embeddings of samples 0 and 1
TT = [unit(2, -1), unit(0, 1)]  # the teacher's
CONTRAST = [[0, 2, 3], [1, 4, 5]]  # positive first (exact mode: the sample itself), then K = 2 negatives


def hand_h(v: list[list[float]], bank: list[list[float]], z: float | None) -> tuple[list[list[float]], float]:
    """exp(vᵀe/T) for each row's entries, divided by Z (N · mean over the batch when Z is not set yet)."""
    raw = [[math.exp(sum(a * b for a, b in zip(v[i], bank[j])) / T) for j in row] for i, row in enumerate(CONTRAST)]
    if z is None:
        z = N * sum(map(sum, raw)) / sum(map(len, raw))
    return [[h / z for h in row] for row in raw], z


def hand_nce(h: list[list[float]]) -> float:
    k = len(h[0]) - 1
    noise = k / N
    total = sum(math.log(row[0] / (row[0] + noise + EPS)) + sum(math.log(noise / (x + noise + EPS)) for x in row[1:])
                for row in h)
    return -total / len(h)


def tiny_memory() -> ContrastMemory:
    mem = ContrastMemory(2, N, T, M).double()
    mem.bank_s.copy_(torch.tensor(BANK_S, dtype=torch.float64))
    mem.bank_t.copy_(torch.tensor(BANK_T, dtype=torch.float64))
    return mem


def test_the_nce_objective_and_the_bank_update_equal_a_hand_computation():
    mem = tiny_memory()
    s, t = torch.tensor(S, dtype=torch.float64), torch.tensor(TT, dtype=torch.float64)
    index, contrast = torch.tensor([0, 1]), torch.tensor(CONTRAST)
    h_s, h_t = mem(s, t, index, contrast)
    want_s, z_s = hand_h(S, BANK_T, None)  # the student's embedding against the teacher's bank
    want_t, z_t = hand_h(TT, BANK_S, None)
    torch.testing.assert_close(h_s, torch.tensor(want_s, dtype=torch.float64), rtol=1e-13, atol=0)
    torch.testing.assert_close(h_t, torch.tensor(want_t, dtype=torch.float64), rtol=1e-13, atol=0)
    assert nce_loss(h_s, N).item() + nce_loss(h_t, N).item() == pytest.approx(hand_nce(want_s) + hand_nce(want_t),
                                                                              rel=1e-12)
    assert mem.z.tolist() == pytest.approx([z_s, z_t], rel=1e-13)
    for bank, before, v in ((mem.bank_s, BANK_S, S), (mem.bank_t, BANK_T, TT)):  # entries 0 and 1 moved
        for i in (0, 1):
            moved = [M * a + (1 - M) * b for a, b in zip(before[i], v[i])]
            assert bank[i].tolist() == pytest.approx(unit(*moved), rel=1e-13)
        assert torch.equal(bank[2:], torch.tensor(before[2:], dtype=torch.float64))  # the rest untouched
    # Z is fixed by the first batch: the next batch is divided by the same constants
    banked = [row.tolist() for row in mem.bank_t]  # the teacher's bank as the first batch left it
    h_s2, _ = mem(s, t, index, contrast)
    want_s2, _ = hand_h(S, banked, z_s)
    torch.testing.assert_close(h_s2, torch.tensor(want_s2, dtype=torch.float64), rtol=1e-13, atol=0)
    assert mem.z.tolist() == pytest.approx([z_s, z_t], rel=1e-13)


def test_negatives_are_other_classes_drawn_by_the_batch_key_repeating_only_when_they_must():
    labels = torch.arange(60) % 3  # 20 samples per class: 40 others for every sample
    y, index = labels[:8], torch.arange(8)
    few = draw_contrast(y, index, labels, 30, "exact", torch.Generator().manual_seed(5))
    assert few.shape == (8, 31) and torch.equal(few[:, 0], index)
    assert (labels[few[:, 1:]] != y[:, None]).all()
    assert all(len(set(row.tolist())) == 30 for row in few[:, 1:])  # 30 <= 40: without replacement
    again = draw_contrast(y, index, labels, 30, "exact", torch.Generator().manual_seed(5))
    assert torch.equal(few, again)  # the same key draws the same negatives
    many = draw_contrast(y, index, labels, 100, "exact", torch.Generator().manual_seed(5))
    assert (labels[many[:, 1:]] != y[:, None]).all() and many[:, 1:].unique().numel() <= 60  # with replacement
    relax = draw_contrast(y, index, labels, 4, "relax", torch.Generator().manual_seed(5))
    assert torch.equal(labels[relax[:, 0]], y)  # relax: a positive of the same class


def test_embeddings_are_sized_by_a_shape_probe_for_any_pair():
    """wrn_16_2 pools 128 channels, resnet8 64: the reference's fixed 256 fits neither."""
    torch.manual_seed(0)
    teacher, student = build_model("wrn_16_2", 10, 1, image_size=8), build_model("resnet8", 10, 1, image_size=8)
    labels = torch.arange(40) % 10
    info = DataInfo((1, 8, 8), 10, labels)
    d = build_distiller(CRDConfig(negatives=16), student, teacher, data=info)
    assert (d.embed_s.linear.in_features, d.embed_t.linear.in_features) == (64, 128)
    assert d.memory.bank_s.shape == (40, 128) and "memory.bank_s" in d.trainable_state_dict()
    batch = Batch(torch.randn(5, 1, 8, 8), labels[:5], torch.arange(5), key=3)
    logits, losses = d.forward_train(batch, 1)
    assert logits.shape == (5, 10) and set(losses) == {"ce", "crd"} and all(v.isfinite() for v in losses.values())
    with pytest.raises(ValueError, match="index"):
        d.forward_train(Batch(batch.x, batch.y), 1)
