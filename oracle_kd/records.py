"""Run identity, the run store's layout, atomic writes and the per-run lock.

A run is identified by a hash of its *semantic* config: what changes the numbers it produces
(dataset and augmentation, models, method, recipe, seed, teacher source), never paths, progress bars
or hardware switches. The same semantic config therefore always maps to the same folder, which is
what lets a relaunched sweep skip finished runs and resume unfinished ones.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

RESULT = "result.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "last.pt"
MODEL = "model.pt"
CONFIG = "config.json"
ID_LENGTH = 12


def semantic_config(rc: Any, teacher_identity: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a RunConfig that defines the run. `teacher_identity` is None for methods without a
    teacher, so a `ce` run is the same run whether launched by hand or as an auto teacher."""
    dataset = dataclasses.asdict(rc.dataset)
    dataset.pop("root")
    dataset.pop("workers")
    if dataset["name"] != "digits":
        dataset.pop("test_fraction")
    return {
        "dataset": dataset,
        "student": rc.student.arch if rc.student.stem == "auto" else dataclasses.asdict(rc.student),
        "teacher": teacher_identity,
        "method": dataclasses.asdict(rc.method),
        "train": dataclasses.asdict(rc.train),
        "seed": rc.seed,
    }


def run_id(semantic: dict[str, Any]) -> str:
    blob = json.dumps(semantic, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_LENGTH]


def run_dir(store: str | Path, rc: Any, rid: str) -> Path:
    """<store>/<dataset>/<method>/<teacher>-<student>/<run_id>; `none` stands for no teacher."""
    teacher = rc.teacher.arch if _uses_teacher(rc) else "none"
    return Path(store) / rc.dataset.name / rc.method.name / f"{teacher}-{rc.student.arch}" / rid


def _uses_teacher(rc: Any) -> bool:
    from oracle_kd.methods import method_entry

    return method_entry(rc.method.name)[0].needs_teacher


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Per-epoch rows; a torn last line (a crash mid-append) is ignored."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def append_metrics(path: str | Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def run_lock(folder: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on a run folder, so two processes (a parallel sweep whose jobs need the
    same missing teacher, say) never train or write the same run at once. `on_wait` is called before
    blocking when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:  # "a": taking the lock never rewrites the file
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
