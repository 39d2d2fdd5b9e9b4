"""What a run folder holds, and the schema of result.json (the record that marks a run finished).

Layout of a run folder: config.json (semantic + full config), metrics.jsonl (one row per epoch),
last.pt (everything needed to resume, including a copy of the metrics rows), model.pt (final student
weights), best.pt (the student at its best test epoch) and, written last, result.json — its presence is
what "finished" means. A run that stopped on an error holds failure.json instead (removed when a later
launch takes the run up again).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from oracle_kd.store.io import file_sha256, read_metrics_checked

RESULT = "result.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "last.pt"
MODEL = "model.pt"
BEST = "best.pt"  # the student at its best test epoch (the number the paper reports), beside the final model.pt
CONFIG = "config.json"
FAILURE = "failure.json"
CORRUPT_SUFFIX = ".corrupt"  # a damaged file the tool replaced is kept beside it under this suffix
REQUIRED = ("run_id", "status", "dataset", "method", "student", "seed", "best_top1", "last_top1", "semantic")
HASHED = (MODEL, BEST, METRICS, CHECKPOINT)  # the files a result.json vouches for by SHA-256
VERIFIED = (MODEL, BEST, METRICS)  # checked whenever a finished run is read; last.pt only when it rebuilds them


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git:<commit>` (with `+dirty` for uncommitted changes) when the package runs from a git checkout,
    else `oracle-kd <version>` of the installed package: which code produced a record."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if commit:
            return f"git:{commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"oracle-kd {version('oracle-kd')}"
    except PackageNotFoundError:
        return "unknown"


@dataclass
class RunResult:
    """result.json. Readers (the aggregator) rely on the REQUIRED keys; the rest is context."""

    run_id: str
    status: str
    folder: str
    dataset: str
    method: str
    student: str
    teacher: Optional[str]
    seed: int
    best_top1: float
    best_top5: float
    best_epoch: int
    last_top1: float
    last_top5: float
    last_test_loss: float
    epochs: int
    wall_time_s: float
    extra_params: int
    train_images_per_s: float
    teacher_info: Optional[dict[str, Any]]
    semantic: dict[str, Any]
    config: dict[str, Any]
    device: str
    world_size: int
    sync_bn: Optional[bool]
    torch_version: str
    finished_at: str
    cohort: Optional[dict[str, Any]] = None  # {"size": runs trained together, "time_share": this run's share}
    code_version: str = dataclasses.field(default_factory=code_version)
    model_bytes: Optional[int] = None  # size of model.pt, so a truncated file is noticed without reading it
    sha256: Optional[dict[str, str]] = None  # file name -> SHA-256 of the HASHED files as the run wrote them
    student_params: Optional[int] = None  # the student's parameter count (KED compares models of equal size)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def result_problem(rec: Any) -> str | None:
    """Why a parsed result.json cannot be trusted as a finished record (one phrase), or None."""
    if not isinstance(rec, dict):
        return f"holds a JSON {type(rec).__name__}, not an object"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"lacks {', '.join(missing)}"
    if rec["status"] != "finished":
        return f"has status {rec['status']!r}, not 'finished'"
    bad = [k for k in ("best_top1", "last_top1") if not _number(rec[k])]
    bad += [k for k, kind in (("run_id", str), ("semantic", dict), ("seed", int)) if not isinstance(rec[k], kind)]
    return f"has malformed {', '.join(bad)}" if bad else None


def read_result(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a sound result.json; (None, why) for a damaged one; (None, None) when absent."""
    path = folder / RESULT
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "is not valid JSON (truncated or garbled)" if raw.strip() else "is empty"
    problem = result_problem(rec)
    return (None, problem) if problem else (rec, None)


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of each HASHED file the folder holds: what a finished record vouches for."""
    return {name: file_sha256(folder / name) for name in HASHED if (folder / name).is_file()}


def damaged_files(folder: Path, rec: dict[str, Any]) -> dict[str, str]:
    """File name -> why a finished run's file cannot be trusted (missing, truncated, not its recorded SHA-256,
    garbled metric rows). A record written before the hashes is checked by model.pt's size alone."""
    out: dict[str, str] = {}
    model = folder / MODEL
    expected = rec.get("model_bytes")
    if not model.is_file():
        out[MODEL] = "is missing"
    elif model.stat().st_size == 0 or (isinstance(expected, int) and model.stat().st_size != expected):
        out[MODEL] = (f"is truncated ({model.stat().st_size} bytes"
                      f"{f', expected {expected}' if isinstance(expected, int) else ''})")
    hashes = rec.get("sha256") if isinstance(rec.get("sha256"), dict) else {}
    for name in VERIFIED:
        if name in out or name not in hashes:
            continue
        path = folder / name
        if not path.is_file():
            out[name] = "is missing"
        elif file_sha256(path) != hashes[name]:
            out[name] = "does not match its SHA-256 in result.json (damaged in place)"
    if METRICS not in out:
        garbled = read_metrics_checked(folder / METRICS)[1]
        if garbled:
            out[METRICS] = f"has {len(garbled)} garbled row(s) (line {', '.join(map(str, garbled[:5]))})"
    return out


def files_problem(folder: Path, rec: dict[str, Any]) -> str | None:
    """Why a finished run's files are unusable, in one phrase naming each damaged file, or None."""
    damaged = damaged_files(folder, rec)
    return "; ".join(f"{name} {why}" for name, why in damaged.items()) or None
