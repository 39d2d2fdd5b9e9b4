"""User-facing errors: one line that says what is wrong and what to do, never a traceback."""

import errno
import os
import re
from pathlib import Path
from typing import Mapping


class OracleKDError(Exception):
    """Base class for errors that the CLI prints as a single line (exit code 2)."""


class ConfigError(OracleKDError):
    """A config key or value is unknown, of the wrong type, or out of range."""


class PairRefused(ConfigError):
    """A method cannot distil this teacher into this student (OFD and a student without pre-ReLU maps): in a
    benchmark grid a blank cell, which the cohort launcher skips with its one line, not a mistake in the config."""


class DatasetError(OracleKDError):
    """A dataset folder is missing or malformed, or a data file is unsafe to read."""


class CheckpointError(OracleKDError):
    """A checkpoint is missing, unsafe, or does not fit the architecture it is loaded into."""


class StoreError(OracleKDError):
    """The run store cannot be read or written (disk full, read-only, permissions), or a record in it is
    damaged beyond what the tool can rebuild."""


class TrainingError(OracleKDError):
    """A run cannot go on (a non-finite loss): it stopped with its last good checkpoint kept."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^\s:/@]*):[^\s/@]*@")


def mask_credentials(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://user:***@host`, wherever a URL stands in `text`: what the tool
    writes (records, logs, error lines) never carries a database password."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def reason(exc: BaseException, limit: int = 240) -> str:
    """The gist of a third-party exception as one plain line: colour codes stripped, and for torch's long
    weights_only refusals the sentence that names the refused global, not the paragraphs of advice."""
    text = mask_credentials(_ANSI.sub("", str(exc)))
    unsupported = re.search(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module)", text)
    if unsupported:  # torch's two wordings: a global outside the allow-list, or one of a module it blocks
        return f"Unsupported global: {unsupported.group(1)}"
    unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)  # torch's weights_only: the real cause
    first = unpickler.group(1).strip() if unpickler else next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    first = first if len(first) <= limit else first[: limit - 1].rstrip() + "…"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def from_scheduler(exc: BaseException) -> bool:
    """submitit's UncompletedJobError: raised in a SLURM job that reached its time limit and may not be requeued
    again, and by the launcher for a job that died without a result (killed, out of memory). The run is
    interrupted, not failed (relaunching resumes it), and the error is told in one line. Matched by name so
    that submitit is not imported."""
    return type(exc).__name__ == "UncompletedJobError" and type(exc).__module__.split(".")[0] == "submitit"


_KEEP = "free space there and relaunch (finished runs and last checkpoints are intact)"
_OS_ADVICE: dict[int, tuple[str, str]] = {  # errno -> (what happened, what to do; {} is the setting to change)
    errno.ENOSPC: ("the disk is full", _KEEP),
    errno.EDQUOT: ("the disk quota is exceeded", _KEEP),
    errno.EROFS: ("the file system is read-only", "point {} at a writable folder"),
    errno.EACCES: ("permission denied", "fix the folder's permissions or point {} elsewhere"),
    errno.EPERM: ("operation not permitted", "fix the folder's permissions or point {} elsewhere"),
    errno.ENOTDIR: ("part of the path is a file, not a folder", "choose another {}"),
    errno.EEXIST: ("it exists and is not a folder", "choose another {}"),  # mkdir(exist_ok=True) on a file
    errno.ENOENT: ("no such file or folder", ""),
}
_ANY_FOLDER = "store= (or results_dir=)"  # the advice when no setting is known to place the path


def os_error_line(exc: OSError, setting: "str | None" = None) -> str:
    """One line for a failed file operation: the path, and what to do about it, naming `setting` (e.g.
    `hydra.run.dir=`: the setting that placed the path, see `setting_for`; by default store= or results_dir=)."""
    where = f" {exc.filename!r}" if exc.filename else ""
    what, todo = _OS_ADVICE.get(exc.errno or 0, (exc.strerror or str(exc), ""))
    return f"cannot use{where}: {what}" + (f"; {todo.format(setting or _ANY_FOLDER)}" if todo else "")


def setting_for(path: "str | os.PathLike[str] | None", folders: "Mapping[str, str]") -> "str | None":
    """Which of `folders` (setting -> the folder it places, e.g. {"store=": "runs"}) a failed `path` belongs to,
    so that the advice names the setting to change: the deepest folder holding the path; else, for a path
    above them (a parent that could not be created), every folder below it."""
    if not path:
        return None
    target = Path(os.path.abspath(os.path.expanduser(path)))
    places = {key: Path(os.path.abspath(os.path.expanduser(folder))) for key, folder in folders.items() if folder}
    holding = [key for key, place in places.items() if place == target or place in target.parents]
    if holding:
        return max(holding, key=lambda key: len(places[key].parts))
    below = [key for key, place in places.items() if target in place.parents]
    return " or ".join(below) or None


def require(ok: bool, key: str, value: object, rule: str) -> None:
    """Raise `ConfigError("<key>=<value> <rule>")` unless `ok`: the one-line form every check uses."""
    if not ok:
        raise ConfigError(f"{key}={value!r} {rule}")


def choice(key: str, value: object, allowed: "list[str] | tuple[str, ...]") -> None:
    """`value` must be one of `allowed`; the message lists them."""
    require(value in allowed, key, value, f"is not one of: {', '.join(allowed)}")
