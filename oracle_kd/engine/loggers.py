"""The run loggers by name (`logger=`): TensorBoard (`engine/curves.py`), W&B and MLflow, one class each behind
the interface `curves.Curves`, and `open_curves`, which the trainer calls when a run resumes.

W&B and MLflow are sent what TensorBoard shows: the run's semantic config, every metrics row at step = its
epoch, our run_id as a tag and, when the run finishes, its result (best and last top-1 and top-5, best epoch,
last test loss, as result.json has them). Unlike TensorBoard's event files, a W&B run or a tracking server
cannot be rewritten, so a resume *continues* the logged run: it reopens the same one (W&B: its id is our
run_id; MLflow: the run tagged with it) and sends only the epochs after the last one the logger holds, so no
step is logged twice. Nothing stale can be held: `Member.save_epoch` sends a row only after last.pt has it, and
an epoch checkpointed but never sent (a kill in between) is sent by the next launch. A run restarted from
epoch 0 (last.pt set aside as corrupt) keeps its logged epochs and sends the later ones.

A logger that cannot start stops the launch in one line before the run trains (`config.check_logger` at
validation; here at open, for what only the backend can tell). One that fails while the run trains is turned
off with a warning and the run goes on: metrics.jsonl is the record, and a relaunch sends what was missed.
Imports of wandb and mlflow are lazy: the package imports without them.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from oracle_kd.config import tracking_scheme
from oracle_kd.engine.curves import STEP_KEY, Curves, LoggedRun, TensorBoardCurves, flatten, scalars
from oracle_kd.errors import ConfigError, reason
from oracle_kd.store.io import atomic_write_json, read_json, run_lock

log = logging.getLogger("oracle_kd")
RESULT_KEYS = ("best_top1", "best_top5", "best_epoch", "last_top1", "last_top5", "last_test_loss")


def final_result(rows: list[dict[str, Any]]) -> dict[str, float]:
    """A finished run's result from its rows, as the trainer records it (the best epoch is the first with the
    highest top-1, as `TrainState.record_eval` keeps it)."""
    best, last = max(rows, key=lambda r: r["test_top1"]), rows[-1]
    return {"best_top1": best["test_top1"], "best_top5": best["test_top5"], "best_epoch": best[STEP_KEY],
            "last_top1": last["test_top1"], "last_top5": last["test_top5"], "last_test_loss": last["test_loss"]}


class Continued(Curves, abc.ABC):
    """A logger whose backend keeps the run, continued across launches (the module docstring). A subclass says
    how to `start` (open or reopen the run; return the last epoch it holds, 0 for none), `send` an epoch and
    `finish` (with the result when the run finished)."""

    def __init__(self, run: LoggedRun) -> None:
        self.run, self.rows, self.live = run, [], True
        try:
            self.last = self.start()
        except ConfigError:
            raise
        except Exception as exc:  # the backend refused (credentials, permissions, a store it cannot open)
            raise ConfigError(f"logger={self.name} could not start: {reason(exc)}") from None
        for row in run.rows:
            self.log(row)

    @classmethod
    def open(cls, run: LoggedRun) -> "Continued":
        return cls(run)

    @abc.abstractmethod
    def start(self) -> int:
        """The backend's run opened or reopened; returns the last epoch it already holds (0: none)."""

    @abc.abstractmethod
    def send(self, epoch: int, values: dict[str, float]) -> None:
        """One epoch's scalars to the backend."""

    @abc.abstractmethod
    def finish(self, result: dict[str, float] | None) -> None:
        """The final result (None: the launch ended before the last epoch), then close the run."""

    def log(self, row: dict[str, Any]) -> None:
        epoch = int(row[STEP_KEY])
        if not self.live or (self.rows and epoch <= self.rows[-1][STEP_KEY]):
            return
        self.rows.append(row)
        if epoch > self.last and self._guard(self.send, epoch, scalars(row)):
            self.last = epoch

    def close(self) -> None:
        if self.live:
            done = self.run.epochs > 0 and bool(self.rows) and self.rows[-1][STEP_KEY] >= self.run.epochs
            self._guard(self.finish, final_result(self.rows) if done else None)
            self.live = False

    def _guard(self, call: Callable[..., None], *args: Any) -> bool:
        """Whether `call` went through; a failure while the run trains turns the logger off, not the run."""
        try:
            call(*args)
            return True
        except Exception as exc:  # whatever the backend raises: the run must not die of its logger
            self.live = False
            log.warning("run %s: logger=%s failed (%s); the run goes on without it (metrics.jsonl has every epoch, "
                        "and a relaunch of an unfinished run sends what was missed)", self.run.run_id, self.name,
                        reason(exc))
            return False


class WandbCurves(Continued):
    """`logger=wandb`: the W&B run whose id is our run_id, in project `logger_project`, its files under
    `<run folder>/wandb/` (beside tb/: a run's logs stay with its record, wherever it was launched from). Online
    when W&B has credentials (`wandb login`, WANDB_API_KEY) and its server answers, else offline, for `wandb sync`
    later; WANDB_MODE, when set, decides. An offline run has no server to ask what it holds, so the last epoch
    sent is kept in `<run folder>/wandb/sent.json`."""

    name = "wandb"
    SENT = "sent.json"

    def start(self) -> int:
        import wandb

        self.sent = Path(self.run.folder) / "wandb" / self.SENT
        mode = None if os.environ.get("WANDB_MODE") else "online" if wandb.login(prompt=False, verify=False) else "offline"
        self.wb = self._init(wandb, mode)
        return int(read_json(self.sent)[STEP_KEY]) if self.sent.exists() else 0

    def _init(self, wandb: Any, mode: str | None) -> Any:
        r = self.run
        try:
            return wandb.init(dir=r.folder, id=r.run_id, resume="allow", project=r.project, name=r.name,
                              config=r.config, tags=[r.run_id], mode=mode, reinit="create_new",
                              settings=wandb.Settings(console="off", quiet=True))
        except wandb.errors.CommError as exc:  # logged in, but no server answers: keep the run offline instead
            if mode != "online":
                raise
            log.warning("run %s: W&B is not reachable (%s); logging offline to %s (wandb sync uploads it later)",
                        r.run_id, reason(exc), Path(r.folder) / "wandb")
            return self._init(wandb, "offline")

    def send(self, epoch: int, values: dict[str, float]) -> None:
        self.wb.log(values, step=epoch)
        atomic_write_json(self.sent, {STEP_KEY: epoch})

    def finish(self, result: dict[str, float] | None) -> None:
        if result:
            self.wb.summary.update(result)
        self.wb.finish()


def tracking_uri(run: LoggedRun) -> tuple[str, Path | None]:
    """`logger_uri` as MLflow takes it, and the folder when it is a local one: a SQLite store in it (MLflow 3
    refuses its plain-file store), `<store>/mlruns/` by default, so every run of a store logs to one place
    wherever it was launched from."""
    uri = run.uri or str(Path(run.store) / "mlruns")
    if tracking_scheme(uri) is not None:
        return uri, None
    folder = Path(uri).expanduser().resolve()
    return f"sqlite:///{folder / 'mlflow.db'}", folder


def param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class MlflowCurves(Continued):
    """`logger=mlflow`: the run tagged `oracle_kd.run_id=<run_id>` in experiment `logger_project` at
    `tracking_uri`; its params are the semantic config, flattened. The server holds what it was sent, so a
    resume asks it for the last epoch."""

    name = "mlflow"
    TAG = "oracle_kd.run_id"
    BATCH = 100  # MLflow's limit of params per request

    def start(self) -> int:
        from mlflow.tracking import MlflowClient

        uri, local = tracking_uri(self.run)
        self.client = MlflowClient(uri)
        with run_lock(local) if local else contextlib.nullcontext():  # a new SQLite store is made once
            experiment = self._experiment(local)
        found = self.client.search_runs([experiment], f"tags.`{self.TAG}` = '{self.run.run_id}'", max_results=1)
        if not found:
            self.id = self.client.create_run(experiment, run_name=self.run.name,
                                             tags={self.TAG: self.run.run_id}).info.run_id
            self.has_result = False
            self._params()
            return 0
        self.id, metrics = found[0].info.run_id, found[0].data.metrics
        self.client.update_run(self.id, status="RUNNING")
        self.has_result = RESULT_KEYS[0] in metrics  # a finished record rebuilt: its result is there already
        keys = [k for k in metrics if k not in RESULT_KEYS]  # every epoch sends all its keys in one batch
        return max((m.step for m in self.client.get_metric_history(self.id, keys[0])), default=0) if keys else 0

    def _experiment(self, local: Path | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.run.project)
        if found is not None:
            return found.experiment_id
        try:  # a local store keeps its artefacts beside it, not in the working directory (MLflow's default)
            return self.client.create_experiment(self.run.project,
                                                 artifact_location=(local / "artifacts").as_uri() if local else None)
        except MlflowException:  # another process made it meanwhile
            found = self.client.get_experiment_by_name(self.run.project)
            if found is None:
                raise
            return found.experiment_id

    def _params(self) -> None:
        from mlflow.entities import Param

        params = [Param(k, param_value(v)) for k, v in flatten(self.run.config).items()]
        for i in range(0, len(params), self.BATCH):
            self.client.log_batch(self.id, params=params[i:i + self.BATCH])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def send(self, epoch: int, values: dict[str, float]) -> None:
        self._metrics(values, epoch)

    def finish(self, result: dict[str, float] | None) -> None:
        if result and not self.has_result:
            self._metrics(result, self.last)
        self.client.set_terminated(self.id, "FINISHED" if result else "KILLED")  # KILLED: this launch ended early


LOGGERS: dict[str, type[Curves]] = {cls.name: cls for cls in (Curves, TensorBoardCurves, WandbCurves, MlflowCurves)}


def open_curves(kind: str, folder: str | Path, rows: list[dict[str, Any]], hparams: dict[str, Any],
                main: bool = True, **run: Any) -> Curves:
    """The run's logger: `kind` is the `logger` setting; only the main process logs (`main`), but every process
    checks that the backend is installed. `rows` are the metrics rows kept by the checkpoint (empty for a fresh
    run), `hparams` the run's semantic config, `run` the other `LoggedRun` fields."""
    if kind not in LOGGERS:
        raise ConfigError(f"logger={kind!r} is not one of: {', '.join(LOGGERS)}")
    LOGGERS[kind].require()
    return LOGGERS[kind].open(LoggedRun(Path(folder), rows, hparams, **run)) if main else Curves()


__all__ = ["LOGGERS", "MlflowCurves", "WandbCurves", "final_result", "open_curves", "tracking_uri"]
