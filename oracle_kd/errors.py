"""User-facing errors: one line that says what is wrong and what to do, never a traceback."""

import errno
import re


class OracleKDError(Exception):
    """Base class for errors that the CLI prints as a single line (exit code 2)."""


class ConfigError(OracleKDError):
    """A config key or value is unknown, of the wrong type, or out of range."""


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
    unsupported = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if unsupported:
        return unsupported.group(0).replace("GLOBAL ", "")
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


_OS_ADVICE = {
    errno.ENOSPC: "the disk is full; free space there and relaunch (finished runs and last checkpoints are intact)",
    errno.EDQUOT: "the disk quota is exceeded; free space there and relaunch (finished runs and last checkpoints "
                  "are intact)",
    errno.EROFS: "the file system is read-only; point store= (or results_dir=) at a writable folder",
    errno.EACCES: "permission denied; fix the folder's permissions or point store= (or results_dir=) elsewhere",
    errno.EPERM: "operation not permitted; fix the folder's permissions or point store= (or results_dir=) elsewhere",
    errno.ENOTDIR: "part of the path is a file, not a folder; choose another store= (or results_dir=)",
    errno.ENOENT: "no such file or folder",
}


def os_error_line(exc: OSError) -> str:
    """One line for a failed file operation: the path, and what to do about it."""
    where = f" {exc.filename!r}" if exc.filename else ""
    advice = _OS_ADVICE.get(exc.errno or 0, exc.strerror or str(exc))
    return f"cannot use{where}: {advice}"


def require(ok: bool, key: str, value: object, rule: str) -> None:
    """Raise `ConfigError("<key>=<value> <rule>")` unless `ok`: the one-line form every check uses."""
    if not ok:
        raise ConfigError(f"{key}={value!r} {rule}")


def choice(key: str, value: object, allowed: "list[str] | tuple[str, ...]") -> None:
    """`value` must be one of `allowed`; the message lists them."""
    require(value in allowed, key, value, f"is not one of: {', '.join(allowed)}")
