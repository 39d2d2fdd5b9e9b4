"""`logger=wandb` and `logger=mlflow` end to end through the CLI, read back with each tool's own reader: W&B offline
(no credentials) writes its run under the run folder, read with `wandb leet inspect`; MLflow logs over HTTP to a
real `mlflow server` started here, read with its client. Each run is stopped after epoch 1 and relaunched: the
same logged run continues, every epoch is there once with the values of metrics.jsonl, and the config, the
run_id tag and the final result are those of config.json and result.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import mlflow_server
from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import compose, main
from oracle_kd.engine.curves import flatten
from oracle_kd.engine.loggers import RESULT_KEYS, param_value
from oracle_kd.engine.trainer import run_cohort


def launch(store: Path, *extra: str) -> None:
    assert main([f"store={store}", *TINY_RUN, "method=ce", *extra]) == 0


def record(store: Path) -> tuple[dict, list[dict], dict]:
    """The one run's config.json, metrics rows and result.json."""
    (folder,) = {p.parent for p in store.rglob("result.json")}
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return json.loads((folder / "config.json").read_text()), rows, json.loads((folder / "result.json").read_text())


def values(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "epoch"}


# ----------------------------------------------------------------------------- W&B, offline
@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No credentials anywhere W&B looks (key, settings file, netrc), so `logger=wandb` logs offline."""
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    wandb.teardown()  # W&B keeps its settings per process: start from this environment
    yield
    wandb.teardown()


def wandb_records(log: Path) -> list[dict]:
    """Every record of a .wandb transaction log, read by W&B's own reader."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wandb_launches(folder: Path) -> list[list[dict]]:
    """Each launch's records (one offline run directory per launch), in launch order."""
    logs = sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    return [wandb_records(log) for log in logs]


def of_type(records: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in records if r["type"] == kind]


def test_wandb_offline_run_continues_across_a_resume_with_each_epoch_once(tmp_path, wandb_offline) -> None:
    store = tmp_path / "runs"
    launch(store, "logger=wandb", "stop_after_epoch=1")
    launch(store, "logger=wandb")
    cfg, rows, result = record(store)
    launches = wandb_launches(Path(result["folder"]))
    assert len(launches) == 2
    runs = [of_type(records, "run")[0] for records in launches]
    assert [r["run_id"] for r in runs] == [cfg["run_id"]] * 2  # the same W&B run, continued
    assert [r.get("resume", False) for r in runs] == [True, True]  # resume="allow" on both launches
    assert runs[0]["tags"] == [cfg["run_id"]] and runs[0]["project"] == "oracle-kd"
    config = {k: v for k, v in runs[0]["config"]["update"].items() if k != "_wandb"}
    assert config == cfg["semantic"]
    history = [h["item"] for records in launches for h in of_type(records, "history")]
    assert [h["_step"] for h in history] == [1, 2]  # step = epoch, each once over both launches
    for h, r in zip(history, rows):
        assert {k: h[k] for k in values(r)} == pytest.approx(values(r))
    summary = {}
    for update in of_type(launches[1], "summary"):
        summary.update(update["update"])
    assert {k: summary[k] for k in RESULT_KEYS} == pytest.approx({k: result[k] for k in RESULT_KEYS})
    assert not any(k in u["update"] for u in of_type(launches[0], "summary") for k in RESULT_KEYS)  # stopped: none
    assert json.loads((Path(result["folder"]) / "wandb" / "sent.json").read_text()) == {"epoch": 2}


def test_wandb_logs_each_run_of_a_cohort_to_its_own_run(tmp_path, wandb_offline) -> None:
    """A cohort trains several runs in one process (and its auto teacher first): each has its own W&B run."""
    store = tmp_path / "runs"
    rcs = [compose([*TINY_RUN, m, f"store={store}", "logger=wandb"]) for m in ("method=kd", "method=dkd")]
    results = run_cohort(rcs)
    folders = [Path(r["folder"]) for r in results] + [p.parent for p in store.rglob("ce/*/*/result.json")]
    assert len(folders) == 3
    for folder in folders:
        (records,) = wandb_launches(folder)
        assert of_type(records, "run")[0]["run_id"] == folder.name
        assert [h["item"]["_step"] for h in of_type(records, "history")] == [1, 2]


# ----------------------------------------------------------------------------- MLflow, a real tracking server
@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory):
    """A private `mlflow server` on 127.0.0.1 for this module, stopped by PID at its end."""
    pytest.importorskip("mlflow")
    server = mlflow_server.start(tmp_path_factory.mktemp("mlflow_server"))
    yield server.uri
    server.stop()


def test_mlflow_server_run_continues_across_a_resume_with_each_step_once(tmp_path, mlflow_uri) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "runs"
    options = ("logger=mlflow", f"logger_uri={mlflow_uri}", "logger_project=resume-test")
    launch(store, *options, "stop_after_epoch=1")
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("resume-test").experiment_id
    (stopped,) = client.search_runs([experiment])
    assert stopped.info.status == "KILLED" and not set(RESULT_KEYS) & set(stopped.data.metrics)
    launch(store, *options)
    cfg, rows, result = record(store)
    (run,) = client.search_runs([experiment], f"tags.`oracle_kd.run_id` = '{cfg['run_id']}'")
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "ce none->resnet8 s0"
    assert run.data.params == {k: param_value(v) for k, v in flatten(cfg["semantic"]).items()}
    for key in values(rows[0]):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2], key  # each epoch once over both launches
        assert [m.value for m in history] == pytest.approx([r[key] for r in rows]), key
    assert {k: run.data.metrics[k] for k in RESULT_KEYS} == pytest.approx({k: result[k] for k in RESULT_KEYS})
    assert not list((store).glob("mlruns"))  # a tracking URI was given: nothing local
