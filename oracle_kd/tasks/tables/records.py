"""Reading the store for the tables: one row per finished, sound run record, a Problem for every other run folder,
and the learning curves of the runs read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from oracle_kd.errors import reason
from oracle_kd.store import record
from oracle_kd.store.io import read_json, read_metrics
from oracle_kd.tasks.tables.labels import method_labels, recipe_hash, recipe_label, unique_recipes, variant_key

RECIPE_HASH = "_recipe_hash"  # a row's recipe hash while its label is made unique; not a column of any table


@dataclass
class Problem:
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, list):
        out[prefix] = json.dumps(obj)
    else:
        out[prefix] = obj


def _regime(sem: dict[str, Any]) -> str:
    """The data a student learned from: all of the training split, or `n=<train_size>`, plus a chimeric phase."""
    size, train = sem.get("dataset", {}).get("train_size"), sem.get("train", {})
    out = f"n={size}" if size else "all"
    if train.get("chimeric_epochs"):
        out += f" + chimeric {train['chimeric_epochs']}ep x {train['chimeric_size']}"
    return out


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    sem = rec["semantic"]
    train = sem.get("train", {})
    teacher = sem.get("teacher") or {}
    info = rec.get("teacher_info") or {}
    row: dict[str, Any] = {
        "run_id": rec["run_id"], "dataset": rec["dataset"], "method": rec["method"],
        "teacher": rec.get("teacher") or "-", "student": rec["student"], "seed": rec["seed"],
        "variant": variant_key(sem.get("method", {})), "regime": _regime(sem), "student_params": rec.get("student_params"),
        "recipe": recipe_label(train), RECIPE_HASH: recipe_hash(train),
        "best_top1": rec["best_top1"], "last_top1": rec["last_top1"],
        "best_top5": rec.get("best_top5"), "last_top5": rec.get("last_top5"), "best_epoch": rec.get("best_epoch"),
        "epochs": rec.get("epochs"), "wall_time_s": rec.get("wall_time_s"),
        "train_images_per_s": rec.get("train_images_per_s"), "extra_params": rec.get("extra_params"),
        "teacher_run_id": teacher.get("run_id", "-"), "teacher_source": teacher.get("source", "-"),
        "teacher_test_top1": (info.get("test") or {}).get("top1"),
    }
    flat: dict[str, Any] = {}
    _flatten("", {k: v for k, v in sem.items() if k != "teacher"}, flat)
    row.update({k: v for k, v in flat.items() if k not in ("student", "seed")})
    return row


def _read_record(folder: Path, problems: list[Problem]) -> tuple[dict[str, Any] | None, str | None]:
    """A folder's finished record, or None with a Problem saying what the folder is and what to run."""
    rec, problem = record.read_result(folder)
    if problem is not None:
        problems.append(Problem(str(folder / record.RESULT), f"damaged: {record.RESULT} {problem}; relaunch the run "
                                "to rebuild it from last.pt"))
    elif rec is None and (folder / record.FAILURE).exists():
        try:
            error = read_json(folder / record.FAILURE).get("error", "?")
        except (OSError, ValueError, AttributeError):
            error = "failure.json is unreadable"
        problems.append(Problem(str(folder), f"failed: {error}; fix the cause and relaunch to retry it"))
    elif rec is None:
        problems.append(Problem(str(folder), "unfinished run (no result.json): relaunch it to resume"))
    elif (why := record.files_problem(folder, rec)) is not None:
        problems.append(Problem(str(folder), f"damaged: {why}; not counted: relaunch the run to rebuild it from "
                                "last.pt"))
        return None, why
    return rec, problem


def _run_folders(root: Path) -> list[Path]:
    """A run folder is any folder holding a config.json, last.pt or result.json (Hydra's own folders aside)."""
    return sorted({p.parent for name in (record.RESULT, record.CONFIG, record.CHECKPOINT)
                   for p in root.rglob(name) if ".hydra" not in p.parts})


def read_results(roots: Iterable[str | Path]) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per valid, finished record under the roots, and one Problem per bad or unfinished run. `variant`
    is the method's options as a key (`labels.variant_key`); `recipe` is the recipe's label, unique per recipe."""
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for root in map(Path, roots):
        if not root.is_dir():
            problems.append(Problem(str(root), "no such folder"))
            continue
        for folder in _run_folders(root):
            rec, problem = _read_record(folder, problems)
            if rec is None or rec["run_id"] in seen:  # unusable, or the same run reached through two roots
                continue
            try:
                row = _row(rec)
            except (AttributeError, TypeError, KeyError, ValueError) as exc:
                problems.append(Problem(str(folder / record.RESULT), f"malformed record ({reason(exc)})"))
                continue
            seen.add(rec["run_id"])
            rows.append({**row, "folder": str(folder)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df, problems
    df["recipe"] = unique_recipes(df["recipe"], df.pop(RECIPE_HASH))
    df = df.sort_values(["dataset", "teacher", "student", "method", "variant", "recipe", "seed", "run_id"],
                        kind="mergesort").reset_index(drop=True)
    return df, problems


def learning_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Test top-1 per epoch of every finished run (from its metrics.jsonl), keyed like the runs table; `line` is
    the run's method split by the options that vary among that method's runs here (`labels.method_labels`)."""
    parts = []
    for run in df.itertuples(index=False):
        rows = read_metrics(Path(run.folder) / record.METRICS)
        parts += [{"run_id": run.run_id, "epoch": r["epoch"], "test_top1": r["test_top1"]} for r in rows
                  if isinstance(r.get("test_top1"), (int, float))]
    if not parts:
        return pd.DataFrame()
    keys = df[["run_id", "dataset", "recipe", "teacher", "student", "method", "seed"]].assign(line=method_labels(df))
    return pd.DataFrame(parts).merge(keys, on="run_id")
