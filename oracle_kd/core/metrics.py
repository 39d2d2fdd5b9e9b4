"""What the oracle-teacher analysis measures, as small pure functions of logits and labels.

Top-1 (the paper's Table 1: γ = 0 is the scratch teacher, γ > 0 the oracle teacher), calibration (ECE,
Table 2), softmax entropy in bits (Table 3) and how well the outputs cluster by class (silhouette,
Figure 4, on logits, softmax or their 2-D t-SNE). Pure, so tests check them against hand values and
scikit-learn, and the analysis and the γ tuner score with the very same code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPRESENTATIONS = ("logits", "softmax", "tsne")
ArrayLike = Any  # numpy array or (CPU) torch tensor


def _np(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def top1(logits: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy in % (Table 1: γ = 0 is the scratch teacher, γ > 0 the oracle teacher)."""
    return 100.0 * float((_np(logits).argmax(axis=1) == _np(labels)).mean())


def ece(probs: ArrayLike, labels: ArrayLike, bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017), as a fraction in [0, 1]: Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|
    over `bins` equal-width bins (lo, hi] of the max-softmax confidence. Table 2 asks whether x* makes the
    teacher over-confident, which top-1 alone cannot show."""
    p = _np(probs).astype(np.float64)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == _np(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], conf, side="left")  # conf in (lo, hi] -> bin; conf = 0 -> bin 0
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total / len(conf))


def entropy_bits(logits: ArrayLike, tau: float = 1.0) -> float:
    """Mean per-sample entropy of softmax(logits/τ) in bits (Table 3: x* should make the teacher surer)."""
    z = torch.as_tensor(_np(logits), dtype=torch.float64) / tau
    logp = F.log_softmax(z, dim=1)
    return float(-(logp.exp() * logp).sum(dim=1).mean() / math.log(2.0))


def sample_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """A seeded subsample of min(n, n_total) indices, sorted; all indices in order when n >= n_total."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def silhouette(points: ArrayLike, labels: ArrayLike, n: int, seed: int) -> float:
    """Euclidean silhouette score (Figure 4) on a seeded subsample of n points, since it is O(n²) in time
    and memory. NaN when the subsample holds fewer than two classes (the score is undefined)."""
    from sklearn.metrics import silhouette_score

    pts, lab = _np(points), _np(labels)
    idx = sample_indices(len(pts), n, seed)
    pts, lab = pts[idx], lab[idx]
    if len(np.unique(lab)) < 2 or len(np.unique(lab)) >= len(lab):
        return float("nan")
    return float(silhouette_score(pts.astype(np.float64), lab, metric="euclidean"))


def tsne_embed(points: ArrayLike, seed: int) -> np.ndarray:
    """2-D t-SNE (PCA init, seeded) — what the released notebook scored and plotted.

    Run on one OpenMP thread: scikit-learn ships its own libgomp next to torch's, and after torch work
    the two pools fight over the cores (measured: 20 s instead of 3 s for 450 points on 2 cores); one
    thread also keeps the embedding reproducible."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    pts = _np(points).astype(np.float32)
    perplexity = float(min(30.0, max(2.0, (len(pts) - 1) / 3.0)))
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=seed).fit_transform(pts)


def represent(logits: ArrayLike, kind: str, tau: float, seed: int) -> np.ndarray:
    """The points a silhouette score is computed on: raw logits, softmax(logits/τ), or t-SNE of the logits."""
    z = _np(logits).astype(np.float64)
    if kind == "logits":
        return z
    if kind == "softmax":
        return F.softmax(torch.from_numpy(z) / tau, dim=1).numpy()
    if kind == "tsne":
        return tsne_embed(z, seed)
    raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {kind!r}")


def silhouettes(logits: ArrayLike, label_sets: dict[str, ArrayLike | None], representation: str, n: int,
                seed: int, tau: float = 1.0, points: np.ndarray | None = None) -> dict[str, float]:
    """Silhouette for each label set on ONE seeded subsample and ONE representation of it (so fine and
    coarse scores share their t-SNE, and every γ is scored on the same images). None labels -> NaN.
    `points`: the representation of that subsample if already computed (a t-SNE made for the plot)."""
    z = _np(logits)
    idx = sample_indices(len(z), n, seed)
    pts = represent(z[idx], representation, tau, seed) if points is None else points
    return {name: (float("nan") if lab is None else silhouette(pts, _np(lab)[idx], len(idx), seed))
            for name, lab in label_sets.items()}


def teacher_metrics(logits: ArrayLike, labels: ArrayLike, coarse: ArrayLike | None, *, tau: float, bins: int,
            representation: str, silhouette_n: int, seed: int, points: np.ndarray | None = None) -> dict[str, float]:
    """Every per-γ number of the analysis from the oracle teacher's logits."""
    z = torch.as_tensor(_np(logits), dtype=torch.float64)
    probs = F.softmax(z, dim=1)
    sil = silhouettes(z, {"fine": labels, "coarse": coarse}, representation, silhouette_n, seed, tau, points)
    return {"top1": top1(z, labels), "ece": ece(probs, labels, bins),
            "confidence": float(probs.max(dim=1).values.mean()), "entropy_bits": entropy_bits(z, tau),
            "silhouette_fine": sil["fine"], "silhouette_coarse": sil["coarse"]}
