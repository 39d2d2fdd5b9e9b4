"""The loggers' shared rules (`engine/loggers.py`), on a backend that records what it is sent: a resume sends only
the epochs after the last one the backend holds, the result goes once the run has finished, a backend that cannot
start is one line before training and one that fails later only turns itself off; W&B's online/offline choice;
the `logger` options checked at validation. The real backends are exercised in tests/integration/test_wandb_mlflow.py."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.pg_server import free_port
from helpers.tiny_run import TINY_RUN
from oracle_kd import config
from oracle_kd.cli import compose
from oracle_kd.engine.curves import Curves, LoggedRun
from oracle_kd.engine.loggers import LOGGERS, Continued, WandbCurves, final_result, open_curves, tracking_uri
from oracle_kd.errors import ConfigError


def row(epoch: int, top1: float) -> dict:
    return {"epoch": epoch, "lr": 0.1, "train_loss": 1.0 / epoch, "test_top1": top1, "test_top5": top1 + 10,
            "test_loss": 2.0 / epoch, "epoch_time_s": 0.5}


class Recorder(Continued):
    """A backend that holds what it was sent, across launches (`held`), and can be made to fail."""

    name = "recorder"
    held: dict[str, Any] = {}

    def start(self) -> int:
        if self.held.get("refuse"):
            raise RuntimeError("401 Unauthorized:\n bad key")
        sent = self.held.setdefault("sent", [])
        return max((epoch for epoch, _ in sent), default=0)

    def send(self, epoch: int, values: dict[str, float]) -> None:
        if self.held.get("fail_at") == epoch:
            raise ConnectionError("server went away")
        self.held["sent"].append((epoch, values))

    def finish(self, result: dict[str, float] | None) -> None:
        self.held.setdefault("finished", []).append(result)


@pytest.fixture
def recorder(tmp_path: Path):
    Recorder.held = {}

    def launch(kept: list[dict], new: list[dict], epochs: int = 3) -> Recorder:
        logger = Recorder(LoggedRun(tmp_path, kept, {"seed": 0}, run_id="abc", epochs=epochs))
        for r in new:
            logger.log(r)
        logger.close()
        return logger

    return launch


def test_the_registry_is_the_configs_list_of_loggers() -> None:
    assert list(LOGGERS) == list(config.LOGGERS)
    assert set(config.LOGGER_PACKAGES) == set(config.LOGGERS) - {"none"}
    assert all(cls.name == name for name, cls in LOGGERS.items())


def test_the_result_is_the_first_best_epoch_and_the_last_row() -> None:
    rows = [row(1, 40.0), row(2, 50.0), row(3, 50.0), row(4, 45.0)]
    assert final_result(rows) == {"best_top1": 50.0, "best_top5": 60.0, "best_epoch": 2, "last_top1": 45.0,
                                  "last_top5": 55.0, "last_test_loss": 0.5}


def test_a_resume_sends_only_the_epochs_the_backend_lacks_and_the_result_once_finished(recorder) -> None:
    rows = [row(1, 40.0), row(2, 50.0), row(3, 45.0)]
    recorder([], rows[:1])  # stopped after epoch 1
    assert Recorder.held["finished"] == [None]
    recorder(rows[:2], [])  # a kill after last.pt had epoch 2 but before it was sent: the next launch sends it
    recorder(rows[:2], rows[2:] + [rows[2]])  # the last epoch, then a row seen twice
    assert [epoch for epoch, _ in Recorder.held["sent"]] == [1, 2, 3]
    assert Recorder.held["sent"][2][1] == {k: v for k, v in rows[2].items() if k != "epoch"}
    assert Recorder.held["finished"] == [None, None, final_result(rows)]


def test_a_restart_from_epoch_0_keeps_the_logged_epochs(recorder) -> None:
    recorder([], [row(1, 40.0), row(2, 50.0)])
    recorder([], [row(1, 41.0), row(2, 51.0), row(3, 45.0)])  # last.pt was set aside: training starts over
    assert [(epoch, values["test_top1"]) for epoch, values in Recorder.held["sent"]] == [(1, 40.0), (2, 50.0),
                                                                                         (3, 45.0)]
    assert Recorder.held["finished"][-1] == final_result([row(1, 41.0), row(2, 51.0), row(3, 45.0)])


def test_a_backend_that_cannot_start_is_one_config_line(recorder) -> None:
    Recorder.held["refuse"] = True
    with pytest.raises(ConfigError) as info:
        recorder([], [])
    assert str(info.value) == "logger=recorder could not start: RuntimeError: 401 Unauthorized:"


def test_a_backend_failing_during_training_turns_the_logger_off_not_the_run(recorder, caplog) -> None:
    Recorder.held["fail_at"] = 2
    with caplog.at_level(logging.WARNING, logger="oracle_kd"):
        logger = recorder([], [row(1, 40.0), row(2, 50.0), row(3, 45.0)])
    assert [epoch for epoch, _ in Recorder.held["sent"]] == [1]
    assert "finished" not in Recorder.held
    assert not logger.live
    assert "run abc: logger=recorder failed (ConnectionError: server went away); the run goes on without it" in caplog.text
    Recorder.held.pop("fail_at")
    recorder([row(1, 40.0), row(2, 50.0)], [row(3, 45.0)])  # the relaunch sends what was missed
    assert [epoch for epoch, _ in Recorder.held["sent"]] == [1, 2, 3]


def test_non_main_processes_and_logging_off_log_nothing(tmp_path: Path) -> None:
    for kind in ("none", "wandb", "mlflow"):
        if kind != "none" and importlib.util.find_spec(kind) is None:
            continue
        logger = open_curves(kind, tmp_path, [row(1, 40.0)], {"seed": 0}, main=kind == "none")
        assert type(logger) is Curves
    assert list(tmp_path.iterdir()) == []


class FakeWandb:
    """What `WandbCurves` calls of the wandb package: the mode each init asked for; online init can fail."""

    class errors:
        class CommError(Exception):
            pass

    def __init__(self, logged_in: bool, online_fails: bool = False) -> None:
        self.logged_in, self.online_fails, self.modes = logged_in, online_fails, []

    def login(self, prompt: bool, verify: bool) -> bool:
        assert not prompt and not verify  # never asks, never calls the server
        return self.logged_in

    def Settings(self, **kwargs: Any) -> dict:
        return kwargs

    def init(self, mode: str | None, **kwargs: Any) -> object:
        self.modes.append(mode)
        assert kwargs["id"] == "abc" and kwargs["resume"] == "allow" and kwargs["reinit"] == "create_new"
        if mode == "online" and self.online_fails:
            raise self.errors.CommError("context deadline exceeded")
        return object()


@pytest.mark.parametrize("logged_in, online_fails, env_mode, modes", [
    (False, False, None, ["offline"]),  # no credentials: offline, for `wandb sync` later
    (True, False, None, ["online"]),
    (True, True, None, ["online", "offline"]),  # logged in, no network
    (True, False, "offline", [None]),  # WANDB_MODE decides (W&B reads it)
])
def test_wandb_is_online_when_logged_in_and_reachable_else_offline(tmp_path, monkeypatch, logged_in, online_fails,
                                                                   env_mode, modes) -> None:
    fake = FakeWandb(logged_in, online_fails)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    if env_mode:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = object.__new__(WandbCurves)
    logger.run = LoggedRun(tmp_path, [], {}, run_id="abc")
    assert logger.start() == 0
    assert fake.modes == modes


def test_the_mlflow_store_is_a_sqlite_file_in_a_folder_unless_a_uri_is_given(tmp_path: Path) -> None:
    run = LoggedRun(tmp_path, [], {}, store=str(tmp_path / "runs"))
    assert tracking_uri(run) == (f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'mlflow.db'}", tmp_path / "runs" / "mlruns")
    shared = LoggedRun(tmp_path, [], {}, uri=str(tmp_path / "shared"))
    assert tracking_uri(shared) == (f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}", tmp_path / "shared")
    for uri in ("http://127.0.0.1:5000", "postgresql+psycopg://u:p@db/mlflow", "databricks"):
        assert tracking_uri(LoggedRun(tmp_path, [], {}, uri=uri)) == (uri, None)


def test_the_logger_options_are_checked_before_anything_trains(monkeypatch) -> None:
    base = [*TINY_RUN, "method=ce"]
    with pytest.raises(ConfigError, match=r"^logger='neptune' is not one of: none, tensorboard, wandb, mlflow$"):
        compose([*base, "logger=neptune"])
    with pytest.raises(ConfigError, match=r"^logger_uri='localhost:5000' is neither a folder nor a tracking URI"):
        compose([*base, "logger=mlflow", "logger_uri=localhost:5000"])
    port = free_port()  # nothing listens there
    with pytest.raises(ConfigError, match=rf"^logger_uri='http://u:\*\*\*@127.0.0.1:{port}': no MLflow tracking "
                                          "server answers there"):
        compose([*base, "logger=mlflow", f"logger_uri=http://u:secret@127.0.0.1:{port}"])
    with pytest.raises(ConfigError, match=r"^logger_project='' must not be empty$"):
        compose([*base, "logger=wandb", "logger_project="])
    assert compose([*base, "logger=mlflow", "logger_uri=/tmp/elsewhere"]).logger_uri == "/tmp/elsewhere"
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "mlflow") else
                        found(name, *a))
    for kind in ("wandb", "mlflow"):
        with pytest.raises(ConfigError, match=rf"^logger='{kind}' needs the {kind} package: pip install "
                                              rf"oracle-kd\[{kind}\]$"):
            compose([*base, f"logger={kind}"])
