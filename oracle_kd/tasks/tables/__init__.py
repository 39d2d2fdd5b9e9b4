"""task=tables, the aggregator: every result.json in the run store → the paper's comparison tables (CSV, Markdown),
their figures (PNG) and one page showing all of them (index.html).

Everything a table shows is derived from run records; the only numbers typed in by hand are the paper's, in
results/paper/*.csv. The package: `records` reads the store, `labels` names variants, recipes and plots, `paper`
computes the tables, `plots` draws the figures, `formats` writes CSV and Markdown, `page` the HTML page.
CSV output is deterministic: the same records give byte-identical files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from oracle_kd.config import RunConfig
from oracle_kd.errors import choice
from oracle_kd.store.io import atomic_write_bytes
from oracle_kd.tasks.registry import register_task
from oracle_kd.tasks.tables.benchmark import benchmark
from oracle_kd.tasks.tables.formats import csv_bytes, to_markdown
from oracle_kd.tasks.tables.labels import metric_label, shown_variants
from oracle_kd.tasks.tables.page import Section, write_page
from oracle_kd.tasks.tables.paper import (
    crd_benchmark,
    fig5_pairs,
    gamma_grid,
    ked_table,
    oracle_teacher,
    published,
    significance,
    summary_text,
    table4,
    table5,
    wide_table4,
)
from oracle_kd.tasks.tables.plots import Figure, plot_curves, plot_fig5, plot_gamma
from oracle_kd.tasks.tables.records import Problem, learning_curves, read_results

__all__ = ["METRICS", "Problem", "TablesConfig", "build_tables", "learning_curves", "read_results", "significance",
           "summary_text", "tables", "to_markdown"]

log = logging.getLogger("oracle_kd")

METRICS = ("best", "last")
PAGE = "index.html"

# Each table and figure group, in the page's order: its title and one line saying what it shows.
TEXTS: dict[str, tuple[str, str]] = {
    "oracle_teacher": ("Oracle teacher teacher(x*(γ)): Tables 1-3, Figure 4",
                       "The oracle teacher per γ (task=analyze): top-1, entropy and silhouettes beside the paper's "
                       "Tables 1-3 and Figure 4."),
    "table4": ("Table 4 (teacher = student)",
               "Runs whose teacher and student are the same architecture: a row per recipe and method (the teacher "
               "first), a column group per dataset/architecture with mean, std and seeds, the paper's number and the "
               "difference."),
    "table4_long": ("Table 4 (teacher = student), long form",
                    "Table 4 a row per cell: the variant kept where a method has several, the 95 % interval and "
                    "Welch's test against the cell's best method."),
    "fig5_pairs": ("Figure 5: teacher-student pairs",
                   "Every teacher→student pair of every distillation method on the CIFAR-size datasets, with the "
                   "interval, the test against the pair's best method and the paper's number."),
    "gamma_grid": ("Oracle γ grid", "Oracle KD's accuracy at each γ (and reduction, batch size) per pair: the whole "
                   "grid, no variant chosen."),
    "table5": ("Table 5: Tiny-ImageNet / ImageNet", "The Tiny-ImageNet and ImageNet pairs with their teacher rows, "
               "beside the paper's Table 5."),
    "crd_benchmark": ("The CIFAR-100 KD benchmark (CRD/mdistiller pairs)",
                      "The benchmark's pairs: the teacher, the plainly trained student and every method per pair, "
                      "beside the published numbers (CIFAR-100 only)."),
    "benchmark": ("Measured beside published (every source, its own protocol)",
                  "Every measured cell and every published number of the KD benchmarks (results/paper/published.csv): "
                  "measured mean ± std over seeds under the source's protocol (best or last epoch, or the median), "
                  "the published value and source, the difference, flagged off where it exceeds max(2·std, 0.5)."),
    "ked": ("KED against KD at equal parameter counts",
            "KED and its +FitNet/AT/SP variants against KD per dataset, data regime and plain pair, with the "
            "students' parameter counts."),
    "learning_curves": ("Learning curves", "Test top-1 per epoch of every full-data run: a panel per pair and "
                        "recipe, a line per method variant (mean over seeds, ±1 std band)."),
    "runs": ("Every run counted", "One row per finished, sound run record, its semantic config flattened (damaged, "
             "failed and unfinished runs are listed by task=tables, not counted)."),
}


NOT_BY_METRIC = ("oracle_teacher", "learning_curves", "runs", "benchmark")  # what tables.metric does not choose


def _title(name: str, label: str) -> str:
    """The title, with the accuracy shown where `tables.metric` chooses it."""
    title = TEXTS[name][0]
    return title if name in NOT_BY_METRIC else f"{title} — {label}"


def _paper_tables(runs: pd.DataFrame, full: np.ndarray, metric: str) -> dict[str, pd.DataFrame]:
    """The runs table and every table the runs fill. The paper's tables read full-data runs only; runs on a
    subset or with a chimeric phase appear in `ked` (and split by regime, in the console summary)."""
    named = {"mean": f"{metric}_top1_mean", "std": f"{metric}_top1_std"}
    paper_runs = runs[full]
    t4 = table4(paper_runs, metric).rename(columns=named)
    built = {"runs": runs.assign(variant=shown_variants(runs)), "table4_long": t4, "table4": wide_table4(t4),
             "fig5_pairs": fig5_pairs(paper_runs, metric), "gamma_grid": gamma_grid(paper_runs, metric),
             "table5": table5(paper_runs, metric), "crd_benchmark": crd_benchmark(paper_runs, metric),
             "benchmark": benchmark(paper_runs, published(), metric), "ked": ked_table(runs, metric)}
    return {name: t.rename(columns=named) for name, t in built.items() if name == "runs" or not t.empty}


def _write(out: Path, name: str, table: pd.DataFrame, label: str) -> None:
    atomic_write_bytes(out / f"{name}.csv", csv_bytes(table))
    if name != "runs":
        atomic_write_bytes(out / f"{name}.md", to_markdown(table, _title(name, label)).encode())


def _plot(tables: dict[str, pd.DataFrame], runs: pd.DataFrame, out: Path, metric: str) -> dict[str, list[Figure]]:
    """The figures, by the table (or group) they belong to on the page."""
    figures: dict[str, list[Figure]] = {}
    if "fig5_pairs" in tables:
        figures["fig5_pairs"] = plot_fig5(tables["fig5_pairs"], out / "fig5_pairs.png", metric)
    if "gamma_grid" in tables:
        figures["gamma_grid"] = [plot_gamma(tables["gamma_grid"], out / "gamma_grid.png", metric)]
    curves = learning_curves(runs)
    if not curves.empty:
        figures["learning_curves"] = plot_curves(curves, out)
    return figures


def _page(out: Path, tables: dict[str, pd.DataFrame], figures: dict[str, list[Figure]], label: str,
          skipped: int) -> Path:
    sections = [Section(name, _title(name, label), TEXTS[name][1], tables.get(name), tuple(figures.get(name, ())),
                        folded=name == "runs") for name in TEXTS if name in tables or name in figures]
    intro = (f"{len(tables.get('runs', ()))} finished runs; {skipped} run folders skipped (damaged, failed or "
             f"unfinished: task=tables lists them). Accuracy: {label}.")
    return write_page(out / PAGE, intro, sections)


def build_tables(roots: Iterable[str | Path], results_dir: str | Path, metric: str = "best",
                 plots: bool = True) -> dict[str, pd.DataFrame]:
    """Read every record under the roots and write results/*.csv (+ .md, .png) and results/index.html.
    Returns the tables."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}")
    roots, out, label = list(roots), Path(results_dir), metric_label(metric)
    tables: dict[str, pd.DataFrame] = {}
    analysis = oracle_teacher(roots)
    if not analysis.empty:
        tables["oracle_teacher"] = analysis
    df, problems = read_results(roots)
    for p in problems:
        log.warning("skipped %s", p)
    if df.empty:
        log.warning("no finished runs under %s", ", ".join(map(str, roots)))
    else:
        full = (df["regime"] == "all").to_numpy()  # the paper's tables and the curves: full-data runs only
        tables.update(_paper_tables(df.drop(columns="folder"), full, metric))  # paths stay out of the tables
    for name, table in tables.items():
        _write(out, name, table, label)
    figures = _plot(tables, df[full], out, metric) if plots and not df.empty else {}
    _page(out, tables, figures, label, len(problems))
    tables.setdefault("runs", df)
    return tables


@dataclass
class TablesConfig:
    """Which accuracy the tables show (best epoch, as the paper, or last epoch) and extra folders of run
    records to read besides the store."""

    metric: str = "best"
    roots: list[str] = field(default_factory=list)

    def validate(self) -> None:
        choice("tables.metric", self.metric, METRICS)


@register_task("tables", "aggregate the store into the paper's tables (CSV, Markdown, PNG, one HTML page) under "
               "results/", section="tables", config=TablesConfig)
def tables_task(rc: RunConfig) -> dict[str, pd.DataFrame]:
    return tables([rc.store, *rc.tables.roots], rc.results_dir, rc.tables.metric)


def tables(roots: Iterable[str | Path], results_dir: str | Path, metric: str = "best") -> dict[str, pd.DataFrame]:
    """Write the tables, print the summary and where the files are."""
    roots = list(roots)
    built = build_tables(roots, results_dir, metric)
    print(summary_text(built["runs"], metric), flush=True)
    if len(built) > 1:
        print(f"\nwrote {', '.join(k for k in built if k != 'runs')} (+ runs.csv, .md, .png) to {results_dir}/; "
              f"all on one page: {Path(results_dir) / PAGE}", flush=True)
    return built
