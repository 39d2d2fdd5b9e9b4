"""The oracle-teacher metrics (top-1, ECE, entropy, silhouette) against hand values and scikit-learn,
and the paper's oracle-teacher numbers the aggregator prints beside ours."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from oracle_kd.core.metrics import ece, entropy_bits, sample_indices, silhouette, silhouettes, top1

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper" / "oracle_teacher.csv"


def test_ece_hand_case():
    # confidences 0.85 (right), 0.85 (wrong) -> bin (0.8, 0.9]: |0.5 - 0.85| * 2/4 = 0.175
    # 0.62 (right), 0.68 (wrong)            -> bin (0.6, 0.7]: |0.5 - 0.65| * 2/4 = 0.075
    probs = np.array([[0.85, 0.15], [0.85, 0.15], [0.38, 0.62], [0.68, 0.32]])
    labels = np.array([0, 1, 1, 1])
    assert ece(probs, labels, bins=10) == pytest.approx(0.25)
    assert ece(probs, labels, bins=1) == pytest.approx(abs(0.5 - 0.75))
    assert ece(torch.tensor(probs), torch.tensor(labels), bins=10) == pytest.approx(0.25)


def test_ece_of_calibrated_predictions_is_zero():
    # exactly calibrated per bin: confidence 0.75 right 3 times in 4, confidence 0.5 right once in 2
    probs = np.array([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2)
    assert ece(probs, np.array([0, 0, 0, 1, 0, 1]), bins=15) == pytest.approx(0.0, abs=1e-12)
    # labels drawn from the predicted distributions: ECE -> 0 with many samples
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(100_000, 5))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    assert ece(p, labels, bins=15) < 0.01
    assert ece(p, p.argmax(1), bins=15) > 0.1  # always right but not always sure: under-confident


def test_entropy_bits():
    assert entropy_bits(torch.zeros(7, 10), tau=1.0) == pytest.approx(math.log2(10))
    assert entropy_bits(np.zeros((3, 100)), tau=4.0) == pytest.approx(math.log2(100))
    two = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    assert entropy_bits(two, 1.0) == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))
    assert entropy_bits(two * 2, tau=2.0) == pytest.approx(entropy_bits(two, 1.0))
    assert entropy_bits(torch.tensor([[100.0, 0.0, 0.0]]), 1.0) < 1e-6


def test_silhouette_matches_scikit_learn():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    points = rng.normal(size=(120, 5)) + labels[:, None] * 1.5
    assert silhouette(points, labels, n=1000, seed=0) == pytest.approx(silhouette_score(points, labels), abs=1e-12)
    idx = sample_indices(120, 50, seed=3)
    assert len(set(idx)) == 50 and np.array_equal(idx, sample_indices(120, 50, seed=3))
    assert silhouette(points, labels, n=50, seed=3) == pytest.approx(silhouette_score(points[idx], labels[idx]))
    assert math.isnan(silhouette(points, np.zeros(120, dtype=int), n=120, seed=0))
    # fine and coarse scores share one subsample (and one t-SNE); missing coarse labels give NaN
    both = silhouettes(points, {"fine": labels, "coarse": labels // 2, "none": None}, "logits", n=50, seed=3)
    assert both["coarse"] == pytest.approx(silhouette_score(points[idx], labels[idx] // 2))
    assert both["fine"] == pytest.approx(silhouette_score(points[idx], labels[idx])) and math.isnan(both["none"])


def test_top1():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, -1.0], [0.0, 5.0]])
    assert top1(logits, torch.tensor([0, 1, 1, 0])) == 50.0


def test_paper_oracle_teacher_numbers_are_complete():
    """results/paper/oracle_teacher.csv: Tables 1 and 3 (scratch vs oracle teacher) and Figure 4 per γ."""
    paper = pd.read_csv(PAPER)
    assert list(paper.columns[:5]) == ["dataset", "arch", "metric", "original", "oracle"]
    t1 = paper[paper.metric == "top1"].set_index(["dataset", "arch"])
    assert len(t1) == 8 and tuple(t1.loc[("cifar100", "resnet56"), ["original", "oracle"]]) == (72.46, 90.99)
    assert len(paper[paper.metric == "entropy_bits"]) == 8
    fig4 = paper[paper.metric == "silhouette_fine"].set_index("gamma")["oracle"]
    assert fig4.to_dict() == {0.5: 0.183, 1.0: 0.277, 2.0: 0.387}
