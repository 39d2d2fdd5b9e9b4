"""Files of the store, written so that a crash never leaves half of one: atomic replace, fsync'd appends,
torn-line-tolerant metric reads, and the per-folder lock that keeps two processes off one run."""

from __future__ import annotations

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

TEMP_SUFFIX = ".tmp"  # atomic writes go through `.<name>.<random>.tmp` in the target's folder


_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, computed once per process for one version of a file (path, device, inode, size,
    mtime): a table over many runs, or a teacher every student of a launch reads, hashes each file once."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, then rename: readers see old or new, never half.
    The file gets the mode any other file would (0o666 & ~umask), not mkstemp's private 0600, so colleagues
    sharing a store can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise with_path(exc, path) from exc
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
    """Per-epoch rows. A line that is not a JSON object with an integer `epoch` (a torn last line after a
    crash mid-append, garbled bytes) is skipped: the run's checkpoint holds the authoritative copy."""
    return read_metrics_checked(path)[0]


def read_metrics_checked(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(the per-epoch rows, the 1-based numbers of the lines that are not rows), so a reader can say what it
    left out instead of dropping it silently."""
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    p = Path(path)
    if not p.exists():
        return rows, bad
    for number, line in enumerate(p.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        else:
            bad.append(number)
    return rows, bad


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def append_metrics(path: str | Path, row: dict[str, Any]) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise with_path(exc, path) from exc


def with_path(exc: OSError, path: str | Path) -> OSError:
    """`exc` naming the file it concerns (a failed write() on an open file carries no filename)."""
    return exc if exc.filename else type(exc)(exc.errno, exc.strerror, str(path))


def remove_stale_temps(folder: str | Path) -> int:
    """Delete the temp files of atomic writes that a killed process left in `folder` (full checkpoint
    size each); only safe under the folder's lock. Returns how many were removed."""
    removed = 0
    for p in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed


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


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A matplotlib Figure as PNG bytes (written with `atomic_write_bytes`; no pyplot, no global state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def atomic_write_figure(path: str | Path, fig: Any, dpi: int = 110) -> None:
    """A matplotlib Figure as a PNG file, rendered in memory and written by `atomic_write_bytes` (a killed process
    leaves the old image or none, never a torn one). An OSError names `path`, not the temp file the write went
    through (a failed mkstemp or rename names that), so the one-line error says which figure could not be written."""
    data = figure_png(fig, dpi)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
