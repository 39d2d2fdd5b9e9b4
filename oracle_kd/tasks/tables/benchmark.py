"""The benchmark table: what was measured beside what was published, one row per (dataset, teacher, student,
method) cell and published number. The published numbers are results/paper/published.csv, one row per cell of
each source's table with the source and the protocol it reports (best epoch, last epoch, median of final models).
A measured cell is compared under that protocol: best → the runs' best-epoch top-1, last → their last-epoch top-1,
median → the median over seeds of the last-epoch top-1. Sources differ by a point or more for the same cell
(KD on ImageNet ResNet-34 → ResNet-18 is 70.66, 70.83, 71.03, 71.21 or 71.37 depending on who ran it), so each
published number gets its own row, and a difference is judged against a band, not a point: it is flagged `off`
where |measured − published| exceeds max(2 · the measured std over seeds, 0.5 points), 0.5 with one seed.

Method labels are the published tables' names (`labels.benchmark_label`): `kd+ls`, `kd+dot`, `ttm`, …; a cell also
holds the pair's teacher (the teachers the runs used) and its plainly trained student (the pair's `ce` runs on
the same recipe). Runs on different recipes or with different method options are never pooled: each is a row of
its own, its `recipe` and `variant` saying which."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from oracle_kd.tasks.tables.labels import LABEL_OPTIONS, benchmark_labels, varying_options
from oracle_kd.tasks.tables.paper import ARCH_ORDER, REFERENCE_ROWS

CELL = ["dataset", "teacher", "student", "method"]
PROTOCOLS = ("best", "last", "median")
MIN_TOLERANCE = 0.5  # points: about the seed-to-seed spread of a CIFAR-100 run (mdistiller's five runs span 0.4)
COLUMNS = [*CELL, "recipe", "variant", "n", "statistic", "measured", "measured_std", "published", "published_std",
           "protocol", "published_runs", "published_epochs", "source", "diff", "tolerance", "flag"]


# ----------------------------------------------------------------------------- the comparison, on numbers
def summary(best: list[float], last: list[float], protocol: str) -> tuple[str, float, float]:
    """(what is shown, its value, the std over seeds) of one cell's runs under a published protocol. The std is
    that of the per-run numbers the protocol reads (0 for one run)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    values = np.asarray(best if protocol == "best" else last, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    if protocol == "median":
        return "last_top1 median", float(np.median(values)), std
    return f"{protocol}_top1 mean", float(values.mean()), std


def tolerance(std: float, n: int) -> float:
    """How far a measured cell may sit from a published number before it is flagged: two measured stds, at
    least MIN_TOLERANCE, and MIN_TOLERANCE with one run (no std to speak of)."""
    return max(2.0 * std, MIN_TOLERANCE) if n > 1 else MIN_TOLERANCE


def flag(diff: float, tol: float) -> str:
    """`off` where the difference leaves the band, `within` where it does not, '' where there is nothing to
    compare (no runs, or no published number)."""
    if diff != diff or tol != tol:
        return ""
    return "off" if abs(diff) > tol else "within"


# ----------------------------------------------------------------------------- measured cells
def _variant(key: Any) -> dict[str, Any]:
    """A run's method options without those its label already names (`logit_stand`, `weighted`)."""
    options = json.loads(key) if isinstance(key, str) and key else {}
    return {k: v for k, v in options.items() if k not in LABEL_OPTIONS}


def _per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run counted in a cell: every distillation run under its label, the teachers those runs used
    (a stored teacher run by its record, a teacher file by the accuracy measured when the student run began),
    and the `ce` runs of each pair's student on the same dataset and recipe."""
    kd = df[df["method"] != "ce"]
    rows: list[dict[str, Any]] = []
    for (_, run), label in zip(kd.iterrows(), benchmark_labels(kd)):
        rows.append({"dataset": run["dataset"], "teacher": run["teacher"], "student": run["student"], "method": label,
                     "recipe": run["recipe"], "options": _variant(run.get("variant")), "run": run["run_id"],
                     "best": run["best_top1"], "last": run["last_top1"]})
    by_id = df.set_index("run_id")[["best_top1", "last_top1"]].to_dict("index")
    for _, run in kd.iterrows():
        rid, measured = run.get("teacher_run_id", "-"), run.get("teacher_test_top1")
        if isinstance(rid, str) and rid in by_id:
            best, last = by_id[rid]["best_top1"], by_id[rid]["last_top1"]
        elif measured is not None and measured == measured:
            rid, best, last = f"file:{measured}", measured, measured
        else:
            continue
        rows.append({"dataset": run["dataset"], "teacher": run["teacher"], "student": run["student"],
                     "method": "teacher", "recipe": run["recipe"], "options": {}, "run": rid, "best": best,
                     "last": last})
    pairs = kd[["dataset", "teacher", "student", "recipe"]].drop_duplicates()
    ce = df[df["method"] == "ce"].drop(columns=["teacher"]).merge(pairs, on=["dataset", "student", "recipe"])
    for _, run in ce.iterrows():
        rows.append({"dataset": run["dataset"], "teacher": run["teacher"], "student": run["student"],
                     "method": "student", "recipe": run["recipe"], "options": {}, "run": run["run_id"],
                     "best": run["best_top1"], "last": run["last_top1"]})
    out = pd.DataFrame(rows, columns=[*CELL, "recipe", "options", "run", "best", "last"])
    out["variant_key"] = [json.dumps(o, sort_keys=True, default=str) for o in out["options"]]
    return out.drop_duplicates([*CELL, "recipe", "variant_key", "run"]).reset_index(drop=True)


def measured_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell, recipe and method variant: the runs' best and last top-1 (lists), and `variant`, the options
    that tell it apart from the same label's other variants here ('' where none does)."""
    runs = _per_run(df) if not df.empty else pd.DataFrame()
    if runs.empty:
        return pd.DataFrame(columns=[*CELL, "recipe", "variant", "best", "last"])
    keys = [*CELL, "recipe", "variant_key"]
    cells = runs.groupby(keys, sort=True).agg(best=("best", list), last=("last", list),
                                              options=("options", "first")).reset_index()
    cells["variant"] = varying_options(list(cells["method"]), list(cells["options"]))
    return cells.drop(columns=["variant_key", "options"])


# ----------------------------------------------------------------------------- the table
def _source(row: pd.Series) -> str:
    return f"{row['source_repo']} {row['source_file']}@{row['source_commit']}"


def _row(cell: pd.Series, metric: str) -> dict[str, Any]:
    has_runs = isinstance(cell.get("best"), list)
    has_paper = cell.get("top1") == cell.get("top1") and cell.get("top1") is not None
    protocol = cell["protocol"] if has_paper else metric
    out: dict[str, Any] = {c: cell[c] for c in CELL}
    out.update(recipe=cell["recipe"] if has_runs else "", variant=cell["variant"] if has_runs else "",
               n=len(cell["best"]) if has_runs else 0, statistic="", measured=math.nan, measured_std=math.nan)
    if has_runs:
        out["statistic"], out["measured"], out["measured_std"] = summary(cell["best"], cell["last"], protocol)
    out.update(published=cell["top1"] if has_paper else math.nan,
               published_std=cell["std"] if has_paper else math.nan,
               protocol=cell["protocol"] if has_paper else "", published_runs=cell["n_runs"] if has_paper else pd.NA,
               published_epochs=cell["epochs"] if has_paper else pd.NA, source=_source(cell) if has_paper else "")
    out["diff"] = out["measured"] - out["published"]
    out["tolerance"] = tolerance(out["measured_std"], out["n"]) if has_runs and has_paper else math.nan
    out["flag"] = flag(out["diff"], out["tolerance"])
    return out


def _order(df: pd.DataFrame) -> pd.DataFrame:
    """Dataset, then pairs in the paper's architecture order, the teacher and plain-student rows first in a pair,
    then methods alphabetically; recipe, variant and source last, so the file is the same for the same inputs."""
    def arch(col: pd.Series) -> pd.Series:
        return col.map(lambda a: f"{ARCH_ORDER.index(a) if a in ARCH_ORDER else len(ARCH_ORDER):03d}{a}")

    def method(col: pd.Series) -> pd.Series:
        return col.map(lambda m: f"{REFERENCE_ROWS.index(m) if m in REFERENCE_ROWS else 9}{m}")

    keys = {"teacher": arch, "student": arch, "method": method}
    cols = ["dataset", "teacher", "student", "method", "recipe", "variant", "source"]
    return df.sort_values(cols, key=lambda c: keys[c.name](c) if c.name in keys else c.astype(str),
                          kind="mergesort").reset_index(drop=True)


def benchmark(runs: pd.DataFrame, published: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """Every measured cell and every published number: a row per (cell, recipe, variant) × published number of
    the cell, a measured cell with no published number once (shown as `metric`: best or last), a published
    number with no runs once (n = 0)."""
    cells = measured_cells(runs)
    paper = published if published is not None else pd.DataFrame(columns=[*CELL, "top1"])
    both = cells.merge(paper, on=CELL, how="outer")
    if both.empty:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.DataFrame([_row(cell, metric) for _, cell in both.iterrows()], columns=COLUMNS)
    for col in ("published_runs", "published_epochs"):
        table[col] = table[col].astype("Int64")
    return _order(table)
