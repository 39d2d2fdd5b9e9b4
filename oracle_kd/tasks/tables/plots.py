"""The tables' figures as PNG files: Figure 5's pairs, the γ grid and the learning curves. Every figure is headed by a
title naming its dataset, its teacher→student pairs and its metric, so an image read on its own says what it shows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from oracle_kd.store.io import atomic_write_figure
from oracle_kd.tasks.tables.labels import metric_label, pair_text, plot_title
from oracle_kd.tasks.tables.paper import ARCH_ORDER, METHOD_ORDER

CURVE_METRIC = "test top-1 (%) per epoch, mean ± 1 std over seeds"
CHARS_PER_INCH = 11  # a title's wrap width per inch of figure at the suptitle's font size
MIN_WIDTH = 6.5  # inches: room for a title of two or three lines above a single panel


@dataclass(frozen=True)
class Figure:
    """A written PNG and the title drawn on it (the HTML page repeats it as the image's caption)."""

    path: Path
    title: str


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_order(values: Any, order: list[str]) -> list[str]:
    """The distinct values, those of `order` first in its order, then the rest alphabetically."""
    present = set(values)
    return [v for v in order if v in present] + sorted(present - set(order))


def _finish(fig: Any, title: str, path: Path) -> Figure:
    """Head `fig` with its title, write it as a PNG through the atomic writer (a killed or failed write leaves no torn
    image, and an error names the file), then close it: pyplot keeps every figure it made until then."""
    plt = _pyplot()
    fig.suptitle(title, fontsize=10)
    try:
        fig.tight_layout()
        atomic_write_figure(path, fig)
    finally:
        plt.close(fig)
    return Figure(path, title)


def plot_fig5(fig5: pd.DataFrame, path: Path, metric: str) -> list[Figure]:
    """fig5_pairs_<dataset>.png: a panel per student, the teachers along x, a line per method (mean ± std), and per
    recipe where a dataset's runs used several (`kd · quick · 2 ep`, `kd · 2 ep`: never two recipes on one line)."""
    plt, figures = _pyplot(), []
    for dataset, d in fig5.groupby("dataset", sort=True):
        students = _in_order(d["student"], ARCH_ORDER)
        recipes = sorted(d["recipe"].unique()) if "recipe" in d.columns else [None]
        width = max(4 * len(students), MIN_WIDTH)
        fig, axes = plt.subplots(1, len(students), figsize=(width, 3.8), squeeze=False)
        for ax, student in zip(axes[0], students):
            g = d[d["student"] == student]
            teachers = _in_order(g["teacher"], ARCH_ORDER)
            for method, recipe in [(m, r) for m in _in_order(g["method"], METHOD_ORDER) for r in recipes]:
                line = g[(g["method"] == method) & ((g["recipe"] == recipe) if recipe is not None else True)]
                if line.empty:
                    continue
                m = line.set_index("teacher").reindex(teachers)
                ax.errorbar(range(len(teachers)), m[f"{metric}_top1_mean"], yerr=m[f"{metric}_top1_std"], marker="o",
                            capsize=3, label=method if len(recipes) == 1 else f"{method} · {recipe}")
            ax.set_xticks(range(len(teachers)), teachers, rotation=30)
            ax.set_title(f"student {student}", fontsize=9)
            ax.set_xlabel("teacher")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(metric_label(metric))
        axes[0][-1].legend(fontsize=8)
        title = plot_title("Figure 5, every teacher→student pair", str(dataset), zip(d["teacher"], d["student"]),
                           metric_label(metric), int(CHARS_PER_INCH * width))
        figures.append(_finish(fig, title, path.with_name(f"{path.stem}_{dataset}.png")))
    return figures


GAMMA_LINE = ["dataset", "recipe", "teacher", "student", "gamma_reduction", "batch_size"]


def _line_label(key: tuple[Any, ...], varying: list[str]) -> str:
    """A γ line's legend: its pair, plus the other parts of its key that differ between the lines."""
    parts = dict(zip(GAMMA_LINE, key))
    extra = [f"{c}={parts[c]}" for c in varying if c not in ("teacher", "student")]
    return " ".join([pair_text(parts["teacher"], parts["student"]), *extra])


def plot_gamma(grid: pd.DataFrame, path: Path, metric: str) -> Figure:
    """gamma_grid.png: Oracle KD's accuracy against γ, a line per dataset, recipe, pair, reduction and batch size."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(MIN_WIDTH, 4.2))
    varying = [c for c in GAMMA_LINE if grid[c].nunique(dropna=False) > 1]
    for key, g in grid.groupby(GAMMA_LINE, sort=True, dropna=False):
        g = g.sort_values("gamma")
        ax.errorbar(g["gamma"], g[f"{metric}_top1_mean"], yerr=g[f"{metric}_top1_std"], marker="o", capsize=3,
                    label=_line_label(key, varying))
    ax.set_xlabel("γ")
    ax.set_ylabel(metric_label(metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    datasets = ", ".join(sorted(set(grid["dataset"])))
    title = plot_title("Oracle KD: student accuracy vs γ", datasets, zip(grid["teacher"], grid["student"]),
                       metric_label(metric), int(CHARS_PER_INCH * MIN_WIDTH))
    return _finish(fig, title, path)


def _plot_panel(ax: Any, g: pd.DataFrame) -> None:
    """One pair and recipe: a line per method variant (mean over seeds), with a ±1 std band."""
    from matplotlib.ticker import MaxNLocator

    order = _in_order(g["method"], METHOD_ORDER)
    for _, label in sorted(set(zip(g["method"], g["line"])), key=lambda ml: (order.index(ml[0]), ml[1])):
        per_epoch = g[g["line"] == label].groupby("epoch")["test_top1"]
        mean, std = per_epoch.mean(), per_epoch.std().fillna(0.0)
        (line,) = ax.plot(mean.index, mean.values, label=f"{label} (n={per_epoch.count().max()})")
        ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_curves(curves: pd.DataFrame, out: Path) -> list[Figure]:
    """learning_curves_<dataset>.png: test top-1 vs epoch, a panel per teacher→student pair and recipe, a line per
    method, split by the options that vary among its runs (`oracle gamma=0.2`), never pooled across them."""
    plt, figures = _pyplot(), []
    for dataset, d in curves.groupby("dataset", sort=True):
        panels = sorted(d.groupby(["recipe", "teacher", "student"]).groups)
        width = max(4.5 * len(panels), MIN_WIDTH)
        fig, axes = plt.subplots(1, len(panels), figsize=(width, 3.8), squeeze=False)
        for ax, (recipe, teacher, student) in zip(axes[0], panels):
            _plot_panel(ax, d[(d["recipe"] == recipe) & (d["teacher"] == teacher) & (d["student"] == student)])
            ax.set_title(f"{pair_text(teacher, student)} ({recipe})", fontsize=9)
        title = plot_title("Learning curves", str(dataset), zip(d["teacher"], d["student"]), CURVE_METRIC,
                           int(CHARS_PER_INCH * width))
        figures.append(_finish(fig, title, out / f"learning_curves_{dataset}.png"))
    return figures
