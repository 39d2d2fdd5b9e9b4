"""task=analyze: the oracle teacher teacher(x*(γ)) over a γ grid (the paper's Tables 1-3, Figures 3-4).

For each γ the teacher sees x*(γ) and we measure what the paper claims changes (`oracle_kd.core.metrics`):
top-1, ECE, softmax entropy and the silhouette of its outputs by class, plus a t-SNE picture per γ.

Rows go to `<store>/<dataset>/analysis/<teacher>/<analysis_id>/oracle_teacher.csv`, where the id hashes
every setting that changes a number (not the γ grid: a later launch with other γs adds its rows to the
same file, and recomputes the γs it repeats).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oracle_kd.config import RunConfig
from oracle_kd.core.metrics import REPRESENTATIONS, sample_indices, teacher_metrics, tsne_embed
from oracle_kd.core.reinforce import REDUCTIONS
from oracle_kd.engine.oracle_teacher import OracleSetup, setup_oracle
from oracle_kd.errors import choice, require
from oracle_kd.store.analysis import COLUMNS, CSV_NAME, METRIC_COLUMNS, SETTINGS_NAME
from oracle_kd.store.identity import content_hash
from oracle_kd.store.io import atomic_write_bytes, atomic_write_json, figure_png, run_lock
from oracle_kd.tasks.registry import register_task

log = logging.getLogger("oracle_kd")
SPLITS = ("train", "test")


@dataclass
class AnalyzeConfig:
    """The oracle teacher over a γ grid. task=tune reuses split, batch size, reduction, τ, ECE bins and the
    silhouette sample size from here.

    `batch_size` is the x* batch size: with gamma_reduction=mean each sample moves by γ/B, so it is
    recorded with every row. `representation` is what the silhouette score is computed on (logits,
    softmax, or the 2-D t-SNE embedding of the logits as the released notebook did)."""

    gammas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.5, 1.0, 2.0])
    split: str = "test"
    batch_size: int = 64
    gamma_reduction: str = "mean"
    temperature: float = 1.0
    ece_bins: int = 15
    representation: str = "logits"
    silhouette_samples: int = 2000
    tsne_plots: bool = True
    tsne_samples: int = 2000

    def validate(self) -> None:
        require(len(self.gammas) >= 1 and all(g >= 0 for g in self.gammas), "analyze.gammas", list(self.gammas),
                "must be a non-empty list of values >= 0")
        choice("analyze.split", self.split, SPLITS)
        require(self.batch_size >= 1, "analyze.batch_size", self.batch_size, "must be >= 1")
        choice("analyze.gamma_reduction", self.gamma_reduction, REDUCTIONS)
        require(self.temperature > 0, "analyze.temperature", self.temperature, "must be > 0")
        require(self.ece_bins >= 1, "analyze.ece_bins", self.ece_bins, "must be >= 1")
        choice("analyze.representation", self.representation, REPRESENTATIONS)
        require(self.silhouette_samples >= 3, "analyze.silhouette_samples", self.silhouette_samples, "must be >= 3")
        require(self.tsne_samples >= 3, "analyze.tsne_samples", self.tsne_samples, "must be >= 3")


def analysis_settings(rc: RunConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """What the analysis id hashes: everything that changes a row's numbers except γ itself."""
    a = rc.analyze
    dataset = {"name": rc.dataset.name}
    if rc.dataset.name == "digits":
        dataset["test_fraction"] = rc.dataset.test_fraction
    return {"dataset": dataset, "teacher": identity, "split": a.split, "batch_size": a.batch_size,
            "gamma_reduction": a.gamma_reduction, "temperature": a.temperature, "ece_bins": a.ece_bins,
            "representation": a.representation, "silhouette_samples": a.silhouette_samples, "seed": rc.seed}


def analysis_dir(rc: RunConfig, analysis_id: str) -> Path:
    return Path(rc.store) / rc.dataset.name / "analysis" / rc.teacher.arch / analysis_id


def plot_tsne(emb: np.ndarray, labels: np.ndarray, title: str, label_kind: str) -> bytes:
    """Figure 3: the t-SNE of the oracle teacher's logits coloured by class, as PNG bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.8))
    ax = fig.subplots()
    k = int(labels.max()) + 1 if len(labels) else 1
    cmap = "tab10" if k <= 10 else ("tab20" if k <= 20 else "nipy_spectral")
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap=cmap, s=6, vmin=-0.5, vmax=k - 0.5, linewidths=0)
    fig.colorbar(sc, ax=ax, label=f"{label_kind} label", ticks=range(k) if k <= 20 else None)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return figure_png(fig)


def _gamma_tag(g: float) -> str:
    return f"{g:g}".replace("-", "m")


def _measure(rc: RunConfig, setup: OracleSetup, aid: str) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """One row (and one t-SNE PNG) per distinct γ of the grid."""
    a = rc.analyze
    labels = setup.labels.numpy()
    coarse = setup.coarse.numpy() if setup.coarse is not None else None
    sil_idx = sample_indices(len(labels), a.silhouette_samples, rc.seed)
    plot_idx = sample_indices(len(labels), a.tsne_samples, rc.seed)
    share_tsne = a.tsne_plots and a.representation == "tsne" and np.array_equal(sil_idx, plot_idx)
    plot_labels, plot_kind = (coarse, "coarse") if coarse is not None else (labels, "fine")
    rows, pngs = [], {}
    for gamma in sorted(dict.fromkeys(float(g) for g in a.gammas)):
        z = setup.logits(gamma, a.gamma_reduction)
        emb = tsne_embed(z.numpy()[plot_idx], rc.seed) if a.tsne_plots else None
        m = teacher_metrics(z, labels, coarse, tau=a.temperature, bins=a.ece_bins, representation=a.representation,
                            silhouette_n=a.silhouette_samples, seed=rc.seed, points=emb if share_tsne else None)
        rows.append({"dataset": rc.dataset.name, "split": a.split, "teacher": rc.teacher.arch,
                     "teacher_source": setup.identity["source"], "teacher_id": setup.identity["id"],
                     "analysis_id": aid, "gamma": gamma, "gamma_reduction": a.gamma_reduction,
                     "batch_size": a.batch_size, "temperature": a.temperature, "representation": a.representation,
                     "ece_bins": a.ece_bins, "n_samples": len(labels), "silhouette_n": len(sil_idx),
                     "seed": rc.seed, **m})
        log.info("γ=%g: top-1 %.2f, ECE %.4f, entropy %.3f bits, silhouette fine %.3f coarse %.3f", gamma,
                 m["top1"], m["ece"], m["entropy_bits"], m["silhouette_fine"], m["silhouette_coarse"])
        if emb is not None:
            title = (f"{rc.dataset.name} {a.split} · {rc.teacher.arch} oracle teacher · "
                     f"γ={gamma:g} ({a.gamma_reduction})\n"
                     f"top-1 {m['top1']:.1f}%  silhouette({a.representation}, fine) {m['silhouette_fine']:.3f}")
            pngs[f"tsne_gamma_{_gamma_tag(gamma)}.png"] = plot_tsne(emb, plot_labels[plot_idx], title, plot_kind)
    return rows, pngs


def _merge_write(folder: Path, rows: list[dict[str, Any]], pngs: dict[str, bytes], meta: dict[str, Any]) -> pd.DataFrame:
    """Merge the rows into the folder's CSV under its lock (two launches with different γ grids merge
    instead of racing; a repeated γ is replaced), then write the settings and the pictures."""
    new = pd.DataFrame(rows, columns=COLUMNS)
    with run_lock(folder):
        path = folder / CSV_NAME
        if path.exists():
            old = pd.read_csv(path)
            new = pd.concat([old[~old["gamma"].isin(new["gamma"])], new], ignore_index=True)
        table = new[COLUMNS].sort_values("gamma", kind="mergesort").reset_index(drop=True)
        atomic_write_bytes(path, table.to_csv(index=False, lineterminator="\n").encode())
        atomic_write_json(folder / SETTINGS_NAME, meta)
        for name, data in pngs.items():
            atomic_write_bytes(folder / name, data)
    return table


@register_task("analyze", "the oracle teacher over a γ grid: top-1, ECE, entropy, silhouette, t-SNE",
               section="analyze", config=AnalyzeConfig)
def analyze(rc: RunConfig) -> dict[str, Any]:
    """One CSV row per γ (and a t-SNE PNG per γ) in the store; prints the table."""
    a = rc.analyze
    setup = setup_oracle(rc, a.split, a.batch_size)
    settings = analysis_settings(rc, setup.identity)
    aid = content_hash(settings)
    folder = analysis_dir(rc, aid)
    log.info("analysis %s: %s on %s/%s, γ in %s -> %s", aid, rc.teacher.arch, rc.dataset.name, a.split,
             list(a.gammas), folder)
    rows, pngs = _measure(rc, setup, aid)
    table = _merge_write(folder, rows, pngs, {"analysis_id": aid, "settings": settings,
                                              "teacher_info": setup.teacher_info, "analyze": dataclasses.asdict(a)})
    path = folder / CSV_NAME
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(f"oracle teacher {rc.teacher.arch} on {rc.dataset.name}/{a.split} (analysis {aid}) -> {path}")
        print(table[["gamma", *METRIC_COLUMNS]].to_string(index=False, float_format=lambda v: f"{v:.4f}"),
              flush=True)
    return {"analysis_id": aid, "folder": str(folder), "csv": str(path), "table": table}
