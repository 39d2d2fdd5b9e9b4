"""The life of a run folder apart from training: is it finished (and sound), resumable, failed or new; taking
it up for a launch; recording a failure; setting a damaged file aside. The engine trains, this module keeps
the folder's states, so the aggregator and `task=plan` read them the same way."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from oracle_kd.store import record
from oracle_kd.store.io import atomic_write_json, read_metrics, remove_stale_temps


def finished_record(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(result, None) for a finished run whose record and files are sound; (None, why) when the record or a file
    it vouches for is damaged (a launch rebuilds it from last.pt); (None, None) when the run is not finished."""
    result, problem = record.read_result(folder)
    if result is not None:
        problem = record.files_problem(folder, result)
        return (result, None) if problem is None else (None, problem)
    return None, f"{record.RESULT} {problem}" if problem is not None else None


def add_hashes(folder: Path, result: dict[str, Any], write: bool = True) -> dict[str, Any]:
    """A sound record written before the hashes, with them added (and, if `write`, written back where the store
    is writable: a shared read-only store keeps working as it is)."""
    if result.get("sha256"):
        return result
    result = {**result, "sha256": record.file_hashes(folder)}
    if write:
        try:
            atomic_write_json(folder / record.RESULT, result)
        except OSError:
            pass
    return result


def status(folder: Path) -> str:
    """Where a run stands, in words, without touching it."""
    result, problem = finished_record(folder)
    if result is not None:
        return "finished"
    if problem is not None:
        if problem.startswith(record.RESULT):
            return f"damaged: {problem}: a launch rebuilds it from last.pt (resumes the run if last.pt is short of the end)"
        return f"finished, but {problem}: a launch rebuilds it from last.pt"
    if (folder / record.FAILURE).exists():
        return "failed: a launch retries it from its last checkpoint"
    if (folder / record.CHECKPOINT).exists():
        done = [r["epoch"] for r in read_metrics(folder / record.METRICS)]
        return f"resumable after epoch {max(done)}" if done else "resumable"
    return "new"


def take_up(folder: Path) -> None:
    """A launch takes the run up (under its lock): temp files of a killed write and a previous launch's
    failure.json go."""
    remove_stale_temps(folder)
    (folder / record.FAILURE).unlink(missing_ok=True)


def write_failure(folder: Path, rid: str, error: str) -> None:
    """failure.json: the run stopped on an error (the tables list it as failed, not unfinished). Best effort:
    the store may be the thing that failed."""
    try:
        atomic_write_json(folder / record.FAILURE, {"run_id": rid, "error": error,
                                                    "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    except OSError:
        pass


def set_aside(path: Path) -> Path:
    """Keep a damaged file beside its replacement as `<name>.corrupt`."""
    kept = path.with_name(path.name + record.CORRUPT_SUFFIX)
    os.replace(path, kept)
    return kept
