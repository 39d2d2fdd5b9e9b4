"""The γ tuner: a relaunch continues its study, its SQLite file follows the umask, two processes share a
JournalFileStorage, the short student objective reports per-epoch values; digits with a tiny teacher (shared with
test_analysis.py)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from helpers.oracle_setting import ORACLE_BASE
from oracle_kd.cli import main

REPO = Path(__file__).resolve().parents[2]
BASE = [*ORACLE_BASE]


@pytest.fixture
def store(teacher_store: Path) -> Path:
    return teacher_store


def only_study(storage) -> optuna.study.Study:
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def test_relaunch_continues_the_study(store, tmp_path, capsys):
    db = tmp_path / "db" / "optuna.db"
    args = [f"store={store}", *BASE, "task=tune", "tune.n_trials=4", f"tune.storage=sqlite:///{db}"]
    assert main(args) == 0
    assert main(args) == 0
    study = only_study(f"sqlite:///{db}")
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(study.trials) == 8 and len(trials) == 8
    assert len({t.params["gamma"] for t in trials}) == 8  # a relaunch does not replay the same γs
    assert all(0.01 <= t.params["gamma"] <= 4.0 and -1 <= t.value <= 1 for t in trials)
    assert {"top1", "ece", "entropy_bits"} <= set(trials[0].user_attrs)

    out = capsys.readouterr().out
    best = max(trials, key=lambda t: t.value)
    assert f"method=oracle method.gamma={best.params['gamma']:.4g}" in out
    folder = store / "digits" / "tune" / study.study_name
    summary = json.loads((folder / "best.json").read_text())
    assert summary["n_trials"] == 8 and summary["best_gamma"] == best.params["gamma"]
    assert len((folder / "trials.csv").read_text().splitlines()) == 9
    assert (folder / "score_vs_gamma.png").stat().st_size > 1000


def test_the_study_database_gets_the_umask_mode(store, tmp_path):
    """SQLite makes a new file 0644 whatever the umask; the study's database is written like every other file
    (0o666 & ~umask), so colleagues sharing a store can add trials to it."""
    db = tmp_path / "shared" / "optuna.db"
    umask = os.umask(0o002)
    try:
        assert main([f"store={store}", *BASE, "task=tune", "tune.n_trials=1", f"tune.storage=sqlite:///{db}"]) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(db.stat().st_mode) == 0o664 and stat.S_IMODE(db.parent.stat().st_mode) == 0o775
    assert len(only_study(f"sqlite:///{db}").trials) == 1


def test_two_workers_share_a_journal(store, tmp_path):
    journal = tmp_path / "shared" / "study.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "run.py", f"store={store}", *BASE, "task=tune", "tune.n_trials=3",
                               "tune.sampler=random", f"tune.journal={journal}", f"tune.worker={w}",
                               "hardware.threads=1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for w in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = only_study(storage)
    assert len(study.trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.params["gamma"] for t in study.trials}) == 6  # the workers' samplers are seeded apart


def test_student_objective_reports_each_epoch(store, tmp_path):
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main([f"store={store}", *BASE, "task=tune", "student=resnet8", "tune.objective=student_acc",
                 "tune.student_epochs=2", "tune.n_trials=1", f"tune.storage={db}"]) == 0
    (trial,) = only_study(db).trials
    assert sorted(trial.intermediate_values) == [1, 2]
    result = json.loads((Path(trial.user_attrs["run_folder"]) / "result.json").read_text())
    assert result["epochs"] == 2 and result["method"] == "oracle" and trial.value == result["best_top1"]
    assert result["semantic"]["method"]["gamma"] == trial.params["gamma"]


def test_bad_tune_settings_are_one_line_errors(store, capsys):
    assert main([f"store={store}", *BASE, "task=tune", "tune.gamma_low=0"]) == 2
    assert main([f"store={store}", *BASE, "task=tune", "tune.labels=coarse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "error: tune.gamma_low=0.0 must be > 0 with tune.log_scale=true"
    assert err[1].startswith("error: tune.labels=coarse but dataset 'digits' has no coarse labels")


BLOCKING_TRIAL = """
import sys, time
marker = sys.argv[1]
import oracle_kd.tasks.tune as tune
real = tune.teacher_metrics
def blocked(*args, **kwargs):  # the first trial never ends: the worker is killed inside it
    open(marker, "w").close()
    time.sleep(600)
tune.teacher_metrics = blocked
from oracle_kd.cli import main
sys.exit(main(sys.argv[2:]))
"""


def kill_when_blocked(driver_source: str, args: list[str], tmp_path: Path, timeout: float = 300) -> None:
    """Run `task=tune` through a driver script that blocks at one point (it touches a marker file there), and
    kill -9 the worker once it is there: what a node failure or the OOM killer does."""
    driver, marker = tmp_path / "driver.py", tmp_path / "blocked"
    driver.write_text(driver_source)
    proc = subprocess.Popen([sys.executable, str(driver), str(marker), *args, f"hydra.run.dir={tmp_path / 'h'}"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()  # it ended before reaching the point to kill it at
        assert time.monotonic() < deadline, "too slow"
        time.sleep(0.05)
    proc.kill()
    proc.wait()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """A fresh, empty database URL: SQLite in tmp_path, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres").create_database(tmp_path.name.lower())


def test_a_killed_workers_trial_is_failed_and_retried_not_left_running(store, tmp_path, database):
    db = database
    args = [f"store={store}", *BASE, "task=tune", "tune.n_trials=1", f"tune.storage={db}",
            "tune.heartbeat_interval=1", "tune.grace_period=2"]
    kill_when_blocked(BLOCKING_TRIAL, args, tmp_path)
    (killed,) = only_study(db).trials
    assert killed.state == optuna.trial.TrialState.RUNNING  # what a kill -9 leaves behind
    time.sleep(2.5)  # past the grace period
    assert main(args) == 0
    trials = sorted(only_study(db).trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params["gamma"] == killed.params["gamma"]  # retried with its γ


BLOCKING_SECOND_EPOCH = """
import sys, time
marker = sys.argv[1]
import oracle_kd.tasks.tune as tune
real = tune.run
def second_epoch_blocks(rc):  # epoch 1 trains and checkpoints; the worker is killed inside epoch 2
    if rc.method.name == "oracle" and rc.stop_after_epoch is None:  # the student's last call: epoch 2
        open(marker, "w").close()
        time.sleep(600)
    return real(rc)
tune.run = second_epoch_blocks
from oracle_kd.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_retried_student_trial_resumes_its_run_from_last_pt(store, tmp_path):
    """tune.objective=student_acc: the killed trial's γ is retried, and its student run goes on from the epoch
    the killed worker checkpointed instead of starting over."""
    # the teacher alone: another test of this session may have trained the student run this trial will use
    store = shutil.copytree(store, tmp_path / "store", ignore=shutil.ignore_patterns("oracle", "tune", "*.db"))
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [f"store={store}", *BASE, "task=tune", "student=resnet8", "tune.objective=student_acc",
            "tune.student_epochs=2", "tune.n_trials=1", f"tune.storage={db}", "tune.heartbeat_interval=1",
            "tune.grace_period=2"]
    kill_when_blocked(BLOCKING_SECOND_EPOCH, args, tmp_path)
    (killed,) = only_study(db).trials
    folder = Path(killed.user_attrs["run_folder"])
    epoch_1 = (folder / "metrics.jsonl").read_text()
    assert (folder / "last.pt").exists() and not (folder / "result.json").exists()
    time.sleep(2.5)  # past the grace period
    done = subprocess.run([sys.executable, "run.py", *args, f"hydra.run.dir={tmp_path / 'h2'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = sorted(only_study(db).trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params["gamma"] == killed.params["gamma"] and trials[1].user_attrs["run_folder"] == str(folder)
    assert f"resuming run {folder.name} from epoch 1/2" in done.stdout + done.stderr
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and rows[0] == epoch_1.splitlines()[0]  # epoch 1 was not trained again
    assert trials[1].value == json.loads((folder / "result.json").read_text())["best_top1"]


@pytest.mark.parametrize("url, advice", [
    ("postgresql+pg8000://kd:hunter2@127.0.0.1:1/optuna", "install the SQLAlchemy driver for postgresql+pg8000://"),
    ("postgresql+psycopg2://kd:hunter2@127.0.0.1:1/optuna", "pip install psycopg2-binary"),
    ("postgresql+psycopg://kd:hunter2@127.0.0.1:1/optuna", "cannot open the database"),  # nothing listens on port 1
    ("nosuchdb://kd:hunter2@127.0.0.1:1/optuna", "install the SQLAlchemy driver for nosuchdb://"),
])
def test_a_missing_driver_or_server_is_one_line_without_the_password(store, capsys, monkeypatch, url, advice):
    monkeypatch.delenv("ORACLE_KD_STORAGE_PASSWORD", raising=False)
    assert main([f"store={store}", *BASE, "task=tune", f"tune.storage={url}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: tune.storage=") and advice in err[0], err
    assert "hunter2" not in err[0] and "kd:***@127.0.0.1:1" in err[0]
