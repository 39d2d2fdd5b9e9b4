"""Aggregator: every result.json in the store → a comparison table (mean ± std over seeds)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from oracle_kd import records

log = logging.getLogger("oracle_kd")
REQUIRED = ("run_id", "dataset", "method", "student", "seed", "best_top1", "last_top1")
KEYS = ["dataset", "teacher", "student", "method"]


def read_results(roots: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """One row per valid result.json under the roots, plus one problem line per bad or unfinished record."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            problems.append(f"{root}: no such folder")
            continue
        for cfg in sorted(root.rglob(records.CONFIG)):
            folder = cfg.parent
            path = folder / records.RESULT
            if not path.exists():
                problems.append(f"{folder}: unfinished run (no {records.RESULT}); relaunch it to resume")
                continue
            try:
                rec = records.read_json(path)
            except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
                problems.append(f"{path}: unreadable ({exc.__class__.__name__}); skipped")
                continue
            missing = [k for k in REQUIRED if not isinstance(rec, dict) or k not in rec]
            if missing:
                problems.append(f"{path}: missing {', '.join(missing)}; skipped")
                continue
            rows.append({k: rec.get(k) for k in (*REQUIRED, "teacher", "best_top5", "last_top5", "epochs",
                                                 "wall_time_s", "train_images_per_s")})
    df = pd.DataFrame(rows)
    if not df.empty:
        df["teacher"] = df["teacher"].fillna("-")
        df = df.sort_values(KEYS + ["seed"]).reset_index(drop=True)
    return df, problems


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of best- and last-epoch test top-1, with the number of seeds."""
    if df.empty:
        return df
    g = df.groupby(KEYS, sort=True)
    out = g.agg(n_seeds=("seed", "nunique"), best_top1_mean=("best_top1", "mean"), best_top1_std=("best_top1", "std"),
                last_top1_mean=("last_top1", "mean"), last_top1_std=("last_top1", "std"))
    return out.fillna({"best_top1_std": 0.0, "last_top1_std": 0.0}).round(2).reset_index()


def print_table(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "no finished runs"
    show = summary.copy()
    show["best top-1 (%)"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(show.best_top1_mean, show.best_top1_std)]
    show["last top-1 (%)"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(show.last_top1_mean, show.last_top1_std)]
    return show[KEYS + ["n_seeds", "best top-1 (%)", "last top-1 (%)"]].to_string(index=False)


def tables(store: str | Path, results_dir: str | Path) -> pd.DataFrame:
    """Read the store, report bad records, write results/runs.csv and results/summary.csv, print the table."""
    df, problems = read_results([store])
    for p in problems:
        log.warning("skipped: %s", p)
    summary = summarize(df)
    out = Path(results_dir)
    if not df.empty:
        records.atomic_write_bytes(out / "runs.csv", df.to_csv(index=False, float_format="%.4f").encode())
        records.atomic_write_bytes(out / "summary.csv", summary.to_csv(index=False, float_format="%.2f").encode())
    print(print_table(summary), flush=True)
    return summary
