"""Tuning on a real PostgreSQL server (tests/helpers/pg_server.py, started per test session): workers that open a
fresh database at the same moment all get in, two `task=tune` workers fill one study, and the database password
reaches no file, log or line the tool writes."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import optuna

from helpers.oracle_setting import ORACLE_BASE
from oracle_kd.store import study_storage

REPO = Path(__file__).resolve().parents[2]


def _open_at_once(url: str, barrier, results) -> None:
    """One worker: wait for the others, then open the storage and the study as task=tune does."""
    try:
        barrier.wait()
        storage = study_storage.make_storage(url, heartbeat_interval=60, grace_period=120, retries=2)
        study = study_storage.open_study(storage, "race", None, {"settings": {"gamma_reduction": "mean"}})
        results.put(("ok", study._study_id))
    except Exception as exc:  # reported to the test, which shows it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_workers_opening_a_fresh_database_together_all_get_in(postgres):
    """Without a retry, two or three processes creating Optuna's tables on a fresh database at the same moment
    lose about half the time (a UniqueViolation on pg_type); every one of them must get the same study."""
    ctx = mp.get_context("spawn")
    for round_ in range(4):
        url = postgres.create_database(f"race_{round_}")
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(url, barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert [kind for kind, _ in got] == ["ok"] * 3, got
        assert len({study_id for _, study_id in got}) == 1
        (summary,) = optuna.get_all_study_summaries(url)
        assert summary.study_name == "race" and summary.user_attrs == {"settings": {"gamma_reduction": "mean"}}


def _tune(store: Path, url: str, worker: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "run.py", f"store={store}", *ORACLE_BASE, "task=tune", "tune.n_trials=3",
                             "tune.sampler=random", f"tune.storage={url}", f"tune.worker={worker}", "hardware.threads=1",
                             f"hydra.run.dir={store / f'hydra{worker}'}", *extra],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_tune_workers_fill_one_study_on_a_fresh_database(postgres, teacher_store):
    url = postgres.create_database("two_workers")
    procs = [_tune(teacher_store, url, w) for w in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (summary,) = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert len({t.params["gamma"] for t in study.trials}) == 6


def test_the_password_reaches_no_file_log_or_line(postgres, tmp_path):
    """A password typed into the URL: the study works, and neither the run store (best.json, student runs'
    config.json), Hydra's .hydra/ files and logs of a multirun, nor the console hold it."""
    store = tmp_path / "store"
    url = postgres.create_database("secrets")
    assert postgres.password in url
    cmd = [sys.executable, "run.py", "-m", f"store={store}", *ORACLE_BASE, "task=tune", "tune.objective=student_acc",
           "student=resnet8", "tune.student_epochs=1", "tune.n_trials=1", f"tune.storage={url}", "tune.worker=0,1",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != study_storage.PASSWORD_ENV})
    assert done.returncode == 0, done.stdout + done.stderr
    (summary,) = optuna.get_all_study_summaries(url)
    assert summary.n_trials == 2
    written = [p for folder in (store, tmp_path / "sweep") for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "best.json" for p in written) and any(p.name == "config.json" for p in written)
    assert any(p.name == "overrides.yaml" for p in written) and any(p.suffix == ".log" for p in written)
    leaked = [str(p) for p in written if postgres.password.encode() in p.read_bytes()]
    assert leaked == []
    assert postgres.password not in done.stdout + done.stderr
    best = next(p for p in written if p.name == "best.json").read_text()
    assert f"oracle:***@127.0.0.1:{postgres.port}" in best
    overrides = next(p for p in written if p.name == "overrides.yaml").read_text()
    assert "ORACLE_KD_STORAGE_PASSWORD" in overrides  # the interpolation, escaped by Hydra
