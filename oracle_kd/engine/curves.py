"""Optional per-epoch curves of a run for TensorBoard (`logger=tensorboard`), under `<run folder>/tb/`.

Every metrics row (the dict `Member.save_epoch` writes to metrics.jsonl) becomes one point per key at global
step = its epoch: the tags are exactly the row's keys (`train_loss`, `train_<term>`, `train_top1`,
`test_top1`, `test_top5`, `test_loss`, `lr`, `epoch_time_s`), `epoch` itself being the step. The run's
semantic config, flattened to dotted keys and kept to its scalar values, is written once as hparams, in the
same event file as the curves (not in a subfolder as `SummaryWriter.add_hparams` does), so the HParams
dashboard shows it next to the run's last `test_top1`. `tensorboard --logdir runs/` shows a whole sweep:
one TensorBoard run per run folder.

Resume: the curves are *rewritten* from the authoritative rows. `open` deletes the run's `tb/` folder and
replays every row the checkpoint kept (`Member.rows` after `resume`), then `log` appends the new epochs.
Why not keep each launch's event file and log only epochs after the resumed one: a launch killed after
writing epoch N+1 to TensorBoard but before checkpointing it leaves a stale N+1 that the next launch logs
again, with other numbers. TensorBoard's `purge_step` hides such a point only from readers that honour the
purge marker, and the stale value stays in the file for every other reader (tbparse, EventAccumulator with
`purge_orphaned_data=False`, scripts over the raw events). Rewriting makes the event files a pure function
of last.pt's rows, like metrics.jsonl, whatever the launch history (a kill at any point, last.pt set aside
as corrupt and the run restarted from epoch 0, a record rebuilt without training). The cost is one replay
of at most `epochs` rows per launch, milliseconds. Replayed points get wall times spaced by their
`epoch_time_s` and ending at the replay, so TensorBoard's relative axis still reads as training time.
Each `log` is flushed: a kill loses nothing the checkpoint has, and a live TensorBoard sees every epoch.

`Curves` is the interface every logger implements (`engine/loggers.py` holds the others, the registry by
name and `open_curves`); logging off, or a non-main process, gets a no-op `Curves`, so the trainer makes the
same three calls either way. Asking for TensorBoard without the package installed is a one-line ConfigError
on every process (so DDP ranks stop together).
"""

from __future__ import annotations

import importlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oracle_kd.config import LOGGER_PACKAGES
from oracle_kd.errors import ConfigError

TB_DIR = "tb"  # inside the run folder
STEP_KEY = "epoch"
HPARAM_METRICS = ("test_top1", "test_top5", "test_loss", "train_top1", "train_loss")  # shown by the HParams dashboard


@dataclass(frozen=True)
class LoggedRun:
    """What a logger is told about the run it logs: its folder, the rows last.pt kept, its semantic config, and
    what the loggers that keep their own record of the run need (its run_id, a readable name, its total epochs:
    a row at the last one means the run finished, the store, `logger_uri`, `logger_project`)."""

    folder: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any]
    run_id: str = ""
    name: str = ""
    epochs: int = 0
    store: str = "runs"
    uri: str | None = None
    project: str = "oracle-kd"


def missing(kind: str) -> str:
    """The one line for a logger whose package is not installed, with the extra that installs it."""
    package = LOGGER_PACKAGES[kind]
    return f"logger={kind} needs the {package} package: pip install oracle-kd[{kind}]"


class Curves:
    """Logging off: every call does nothing. The interface the trainer uses and every logger implements."""

    name = "none"  # the `logger` value that picks it (`loggers.LOGGERS`)

    @classmethod
    def require(cls) -> None:
        """Import what the logger needs, or raise its one-line ConfigError; called on every DDP process."""
        package = LOGGER_PACKAGES.get(cls.name)
        if package is not None:
            try:
                importlib.import_module(package)
            except ImportError:
                raise ConfigError(missing(cls.name)) from None

    @classmethod
    def open(cls, run: LoggedRun) -> "Curves":
        """The run's logger, on the main process, once its rows are known (at resume)."""
        return cls()

    def log(self, row: dict[str, Any]) -> None:
        """One metrics row (an epoch)."""

    def close(self) -> None:
        """Flush and release the logger (idempotent)."""


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys to its leaves (lists and None included)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def flat_hparams(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """A nested config as dotted keys, scalar values only (None, lists and non-finite floats are dropped:
    the HParams plugin takes bool, number or string; torch writes a bool as 1/0)."""
    return {k: v for k, v in flatten(config).items()
            if isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))}


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The row's numeric values other than the step, by key."""
    return {k: float(v) for k, v in row.items()
            if k != STEP_KEY and isinstance(v, (int, float)) and not isinstance(v, bool)}


def summary_writer() -> type:
    """torch's SummaryWriter, or the one-line ConfigError when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing (or too old)
        raise ConfigError(missing("tensorboard")) from None
    return SummaryWriter


class TensorBoardCurves(Curves):
    """One run's event file in `<folder>/tb/`, rewritten from `rows` (see the module docstring)."""

    name = "tensorboard"

    @classmethod
    def require(cls) -> None:
        summary_writer()

    @classmethod
    def open(cls, run: LoggedRun) -> "TensorBoardCurves":
        return cls(run.folder, run.rows, run.config)

    def __init__(self, folder: str | Path, rows: list[dict[str, Any]], hparams: dict[str, Any]) -> None:
        writer_cls = summary_writer()
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        self.path = Path(folder) / TB_DIR
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path)
        else:
            self.path.unlink(missing_ok=True)
        self.writer = writer_cls(log_dir=str(self.path))
        for summary in hparams_summaries(flat_hparams(hparams), dict.fromkeys(HPARAM_METRICS, 0.0)):
            self.writer.file_writer.add_summary(summary)  # exp, session start, session end: once, in this file
        self.last = -1  # the last epoch written: no step is ever written twice
        now, left = time.time(), sum(float(r.get("epoch_time_s", 0.0)) for r in rows)
        for row in rows:
            left -= float(row.get("epoch_time_s", 0.0))
            self._write(row, now - max(left, 0.0))
        self.writer.flush()

    def _write(self, row: dict[str, Any], walltime: float | None = None) -> None:
        step = int(row[STEP_KEY])
        if step <= self.last:
            return
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step, walltime=walltime)
        self.last = step

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            self._write(row)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = ["Curves", "LoggedRun", "TB_DIR", "TensorBoardCurves", "flat_hparams", "flatten", "missing", "scalars"]
