"""Where an Optuna study lives, and opening it safely from many workers at once.

Three kinds of storage: SQLite under the store (the default, for workers on one machine), any SQLAlchemy URL
(PostgreSQL, MySQL: workers on many machines) and a JournalFileStorage (`journal:<path>`, for a shared
filesystem). Two workers opening a fresh database at the same moment race on creating Optuna's tables and the
study's rows; `open_study` retries the loser, whose second attempt finds them made. A password typed into a
URL never reaches a file: `password_out_of_overrides` moves it into an environment variable before Hydra
records the command line, and everything the tool writes goes through `mask_credentials`.
"""

from __future__ import annotations

import os
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from oracle_kd.errors import ConfigError, StoreError, mask_credentials, os_error_line, reason

PASSWORD_ENV = "ORACLE_KD_STORAGE_PASSWORD"
ATTEMPTS = 8
_OVERRIDE = re.compile(r"^(?P<key>\+{0,2}tune\.storage=)(?P<quote>['\"]?)(?P<head>\w[\w+.-]*://[^:/@'\"]*):"
                       r"(?P<password>[^@/'\"]*)@(?P<tail>.*)$")
_DRIVERS = ("No module named", "Can't load plugin")


def password_out_of_overrides(args: list[str]) -> list[str]:
    """`tune.storage=postgresql://user:pw@host/db` becomes `...user:${oc.env:ORACLE_KD_STORAGE_PASSWORD}@host/db`
    with the password in that variable: Hydra writes the overrides and config to `.hydra/` and logs multirun
    jobs' overrides, and would otherwise keep the password there. Workers started by this process (joblib,
    SLURM jobs, which inherit the environment) resolve it the same way."""
    out = []
    for arg in args:
        m = _OVERRIDE.match(arg)
        if m and not m["password"].startswith("${"):
            os.environ[PASSWORD_ENV] = m["password"]
            arg = f"{m['key']}{m['quote']}{m['head']}:${{oc.env:{PASSWORD_ENV}}}@{m['tail']}"
        out.append(arg)
    return out


def storage_url(store: str | Path, url: Optional[str], journal: Optional[str]) -> str:
    """`journal:<path>` (wins), else the URL, else SQLite at <store>/optuna.db."""
    if journal:
        return f"journal:{Path(journal).expanduser().resolve()}"
    if url:
        return url
    return f"sqlite:///{Path(store).expanduser().resolve() / 'optuna.db'}"


def make_storage(url: str, heartbeat_interval: int, grace_period: int, retries: int) -> Any:
    """A JournalStorage for `journal:` paths; otherwise an RDBStorage with Optuna's heartbeat, so a trial whose
    worker was killed does not stay RUNNING forever: once silent past the grace period it is failed and retried
    with its γ (journal storages have no heartbeat). A missing driver, an unknown dialect, an unreachable server,
    refused credentials or a SQLite file that cannot be written is one line."""
    import optuna
    import sqlalchemy.exc

    if url.startswith("journal:"):
        return _journal(Path(url[len("journal:"):]))
    _sqlite_ready(url)
    shown = mask_credentials(url)
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what a killed worker needs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)
            return _retry_races(lambda: optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=retry))
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise ConfigError(f"tune.storage={shown}: its database driver is not installed ({reason(exc)}); "
                          f"{driver_advice(url)}") from None
    except sqlalchemy.exc.ArgumentError as exc:
        raise ConfigError(f"tune.storage={shown} is not a database URL ({reason(exc)}); e.g. "
                          "postgresql+psycopg://user@host/db or sqlite:////abs/path.db") from None
    except sqlalchemy.exc.DatabaseError as exc:
        check = ("the file" if _sqlite_path(url) else
                 "the server, the database name and the password (~/.pgpass, PGPASSWORD)")
        raise StoreError(f"tune.storage={shown}: cannot open the database ({reason(exc)}); check {check}") from None


_OPENED: set[str] = set()  # storages `check_storage` opened in this process


def check_storage(url: str, heartbeat_interval: int, grace_period: int, retries: int) -> None:
    """Open the storage as `make_storage` does and close it again: a bad storage is then one line before any
    work (the config check of task=tune), not after an auto teacher trained. Once per process and URL, however
    often a sweep's configs are checked."""
    if url in _OPENED:
        return
    storage = make_storage(url, heartbeat_interval, grace_period, retries)
    engine = getattr(storage, "engine", None)  # an RDBStorage's connection pool
    if engine is not None:
        engine.dispose()
    _OPENED.add(url)


def _journal(path: Path) -> Any:
    """A JournalFileStorage at `path` (its folder made); a path that cannot be written is one line."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise StoreError(os_error_line(exc, "tune.journal=")) from None


def _sqlite_path(url: str) -> Optional[Path]:
    """The file of a `sqlite:///<path>` URL (None for other URLs and in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _sqlite_ready(url: str) -> None:
    """SQLite cannot create its file's folder, gives a new file 0644 whatever the umask, and reports a folder it
    cannot write as "unable to open database file": make the folder, create the file with the umask's mode (as
    every file the tool writes, so colleagues sharing a store can join the study) and open it for writing, so
    that a read-only store is one line naming the file and the setting to change. Opening takes no lock (the
    database is not in use here yet)."""
    path = _sqlite_path(url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o666))  # the kernel applies the umask
    except OSError as exc:
        raise StoreError(f"tune.storage={mask_credentials(url)}: SQLite cannot write its database: "
                         f"{os_error_line(exc, 'tune.storage= (or tune.journal=)')}") from None


def driver_advice(url: str) -> str:
    """Which package serves which URL form (SQLAlchemy >= 2.1 maps plain postgresql:// to psycopg 3)."""
    scheme = url.split("://", 1)[0]
    if scheme in ("postgresql", "postgresql+psycopg"):
        return ("`pip install -e '.[postgres]'` installs psycopg 3, which serves postgresql:// and "
                "postgresql+psycopg:// (postgresql+psycopg2:// needs psycopg2 instead)")
    if scheme == "postgresql+psycopg2":
        return ("postgresql+psycopg2:// needs `pip install psycopg2-binary`; or write postgresql+psycopg:// and "
                "`pip install -e '.[postgres]'` (psycopg 3)")
    return f"install the SQLAlchemy driver for {scheme}:// (e.g. pymysql for mysql+pymysql://)"


def open_study(storage: Any, name: str, pruner: Any, attrs: dict[str, Any]) -> Any:
    """Create or load the study and set its user attributes, retrying when another worker doing the same at the
    same moment wins a unique-key race (every step is idempotent, so a retry is safe)."""
    import optuna

    def attempt() -> Any:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", pruner=pruner,
                                    load_if_exists=True)
        for key, value in attrs.items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)
        return study

    return _retry_races(attempt)


def _is_race(exc: BaseException) -> bool:
    """A concurrent creation: a unique key or a table another worker made first, or SQLite's lock."""
    import sqlalchemy.exc

    if isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)):
        return True
    text = str(exc).lower()
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return "already exists" in text or "database is locked" in text
    import optuna

    return isinstance(exc, optuna.exceptions.DuplicatedStudyError)


def _retry_races(make: Callable[[], Any]) -> Any:
    for attempt in range(ATTEMPTS):
        try:
            return make()
        except Exception as exc:
            if attempt == ATTEMPTS - 1 or not _is_race(exc):
                raise
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # jitter: the workers fall out of step
    raise AssertionError("unreachable")
