"""Cohort training: runs that share a batch stream and a teacher train together, and each ends with
exactly the records of its solo run (bit-identical on CPU fp32: the shared teacher outputs are the same
ops on the same tensors; last.pt too, each run's own RNG state included), also when stopped, relaunched, or
resumed from different epochs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import compose, main
from oracle_kd.engine.trainer import run, run_cohort
from oracle_kd.methods import available_methods
from oracle_kd.models import build_model

# one thread: the killed launch runs in a subprocess, and CPU kernels round differently with other thread counts
BASE = TINY_RUN
# One member per registered method on the tiny pair (the test list is the registry's), with the options that keep
# it cheap; KED distils explaining models and MLKD reads a second view of each batch, so each has cohort tests of
# its own. Then what varies within a method: Oracle's γ (one Step-A pass per γ), logit standardisation, and the
# members with state of their own: CRD's memory bank (buffers), DOT's two momentum buffers (optimizer state).
CHEAP = {"crd": ["method.negatives=128"]}
OWN_COHORT_TESTS = {"ked", "mlkd"}
STATEFUL = [["method=crd", *CHEAP["crd"]], ["method=kd", "train.optimizer=dot"],
            ["method=crd", *CHEAP["crd"], "train.optimizer=dot"]]
MEMBERS = ([[f"method={m}", *CHEAP.get(m, [])] for m in available_methods() if m not in OWN_COHORT_TESTS]
           + [["method=oracle", "method.gamma=0.2"], ["method=kd", "method.logit_stand=true"]] + STATEFUL[1:])
SOME = [["method=kd"], ["method=sad"], ["method=oracle"], ["method=oracle", "method.gamma=0.2"]]  # the faults need
# not every member: KD, SAD and two Oracle γ (which share the teacher's Step-A input gradient) show them


def configs(store: Path, *extra: str, members: list[list[str]] = MEMBERS) -> list:
    return [compose([*BASE, *m, f"store={store}", *extra]) for m in members]


def same_as_solo(store: Path, solo: dict) -> bool:
    snap = snapshot(store)
    return bool(snap) and snap == {k: solo[k] for k in snap}


TIMES = ("wall_time_s", "train_time_s", "cohort_time_s", "epoch_time_s")  # the clock's: differ run to run


def checkpoint_digest(path: Path) -> str:
    """SHA-256 over everything last.pt holds but the clock's readings: weights, optimizer and method state, the
    run's RNG (torch, numpy, Python), schedule, progress and metrics rows, each tensor by its bytes."""
    h = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            h.update(f"T{value.dtype}{tuple(value.shape)}".encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if key not in TIMES:
                    h.update(f"K{key!r}".encode())
                    feed(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(f"L{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            h.update(f"V{value!r}".encode())

    feed(torch.load(path, weights_only=True))
    return h.hexdigest()


def snapshot(store: Path) -> dict[str, tuple[str, str, list[dict], float, float]]:
    """Per run folder: model.pt's hash, last.pt's digest (RNG included, times left out), the metrics rows without
    their times, best and last top-1."""
    out = {}
    for res in sorted(store.rglob("result.json")):
        folder = res.parent
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            r.pop("epoch_time_s")
        rec = json.loads(res.read_text())
        out[str(folder.relative_to(store))] = (hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest(),
                                               checkpoint_digest(folder / "last.pt"), rows,
                                               rec["best_top1"], rec["last_top1"])
    return out


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = tmp_path_factory.mktemp("solo")
    for rc in configs(store):
        run(rc)
    return snapshot(store)


def test_a_cohort_gives_every_member_its_solo_records(solo, tmp_path):
    results = run_cohort(configs(tmp_path))
    assert snapshot(tmp_path) == solo and len(solo) == len(MEMBERS)
    # the ce member is the others' auto teacher: trained first, alone; the others together (OFD
    # with its own batch-statistics teacher pass on the unfolded teacher, the rest on the shared folded one)
    together = len(MEMBERS) - 1
    assert sorted(r["cohort"]["size"] for r in results) == [1] + [together] * together
    shares = [r["cohort"]["time_share"] for r in results if r["cohort"]["size"] == together]
    assert all(0 < s < 1 for s in shares) and sum(shares) == pytest.approx(1.0, abs=0.02)


def test_a_stopped_cohort_resumes_to_the_uninterrupted_numbers(solo, tmp_path):
    stopped = run_cohort(configs(tmp_path, "stop_after_epoch=1", members=SOME))
    assert [r["status"] for r in stopped] == ["stopped"] * 4
    run_cohort(configs(tmp_path, members=SOME))
    assert same_as_solo(tmp_path, solo) and len(snapshot(tmp_path)) == 5  # + the auto teacher


def test_a_bank_and_two_momentum_buffers_resume_to_the_uninterrupted_numbers(solo, tmp_path):
    """CRD, KD+DOT and CRD+DOT stopped after epoch 1 (last.pt holds the bank and both DOT buffers), then relaunched:
    each alone for the first half, as a cohort for the second."""
    for rc in configs(tmp_path, "stop_after_epoch=1", members=STATEFUL):
        assert run_cohort([rc])[0]["status"] == "stopped"
    run_cohort(configs(tmp_path, members=STATEFUL))
    assert same_as_solo(tmp_path, solo) and len(snapshot(tmp_path)) == 4  # + the auto teacher


def test_members_at_different_epochs_catch_up_before_sharing(solo, tmp_path):
    """kd and one oracle run went ahead alone (epoch 1, then the oracle finished); the cohort relaunch trains
    the laggards' epoch 1 without them and then all together."""
    run(compose([*BASE, "method=kd", f"store={tmp_path}", "stop_after_epoch=1"]))
    run(compose([*BASE, "method=oracle", "method.gamma=0.5", f"store={tmp_path}"]))
    results = run_cohort(configs(tmp_path, members=SOME))
    assert all(r["status"] == "finished" for r in results)
    assert same_as_solo(tmp_path, solo) and len(snapshot(tmp_path)) == 5


def test_runs_that_do_not_share_a_stream_are_refused(tmp_path):
    rcs = [compose([*BASE, "method=kd", f"store={tmp_path}"]), compose([*BASE, "method=kd", "seed=1", f"store={tmp_path}"])]
    with pytest.raises(ValueError, match="do not share one batch stream"):
        run_cohort(rcs)


SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
# the README's sweep (seven methods), shrunk to the runs of BASE: the same run_ids as the solo runs above
QUICK = ["-m", "--config-dir", str(SWEEPS), "--config-name", "quick", "train.epochs=2", "train.milestones=[1]",
         "teacher=resnet8", "student=resnet8", "progress=false", "hardware=cpu", "hardware.threads=1"]


def test_the_cohort_launcher_trains_a_sweep_into_its_solo_records(solo, tmp_path, capfd):
    assert main([*QUICK, f"store={tmp_path}"]) == 0  # the preset's launcher is the cohort one
    assert same_as_solo(tmp_path, solo) and len(snapshot(tmp_path)) == 7
    sizes = [json.loads(p.read_text())["cohort"]["size"] for p in tmp_path.rglob("result.json")]
    assert sorted(sizes) == [1] + [6] * 6  # the ce run is the others' auto teacher: trained first
    progress = [line.split("] ", 1)[1] for line in capfd.readouterr().out.splitlines() if "] sweep: " in line]
    assert progress[0] == "sweep: 7 training runs: 0 finished already (skipped), 0 to resume, 7 new"
    assert progress[-1] == "sweep: 7/7 runs done, 0 left"  # one cohort (the ce teacher is trained first)


def test_sweep_progress_counts_runs_and_estimates_the_rest(tmp_path):
    from oracle_kd.cli import compose
    from oracle_kd.launch import SweepProgress

    rcs = [compose([f"store={tmp_path}", "method=ce", f"seed={s}"]) for s in range(3)]
    progress = SweepProgress(rcs)
    assert (progress.total, progress.finished, progress.resumed) == (3, 0, 0)
    assert progress.cohort_done([0], 10.0) == "sweep: 1/3 runs done, 2 left, ETA 0m20s (10 s per run measured)"
    assert progress.cohort_done([1, 2], 20.0) == "sweep: 3/3 runs done, 0 left"


def test_sweep_progress_counts_failed_runs_apart_from_done_ones(tmp_path):
    from oracle_kd.cli import compose
    from oracle_kd.launch import SweepProgress

    progress = SweepProgress([compose([f"store={tmp_path}", "method=ce", f"seed={s}"]) for s in range(5)])
    assert progress.cohort_done([0, 1], 20.0, failed=1) == ("sweep: 1/5 runs done, 1 failed, 3 left, ETA 0m30s "
                                                            "(10 s per run measured)")  # a failed run took time too
    assert progress.cohort_done([2, 3, 4], 30.0) == "sweep: 4/5 runs done, 1 failed, 0 left"


def test_plan_shows_the_teachers_then_one_cohort_per_teacher(tmp_path, capsys):
    """Figure 5's grid (here one of its six methods, to stay quick: 4 teachers x 4 students)."""
    assert main(["-m", "--config-dir", str(SWEEPS), "--config-name", "fig5_pairs", "hydra/launcher=cohort",
                 "method=oracle_paper", "task=plan", f"store={tmp_path}"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan")]
    teachers = [line for line in lines if line.startswith("plan teacher: ")]
    cohorts = [line for line in lines if line.startswith("plan cohort ")]
    assert len(teachers) == 4 and all("new (trained first, once)" in t for t in teachers)
    assert len(cohorts) == 4 and all(" 4 runs, teacher resnet" in c for c in cohorts)
    assert lines.index(cohorts[0]) > lines.index(teachers[-1])
    assert lines[8] == "plan total: 16 runs in 4 cohort(s) after 4 teacher run(s)"
    assert len(lines) == 4 + 4 + 1 + 16  # then every job's own plan line


def test_a_pair_its_method_refuses_is_a_skipped_cell_of_the_grid(tmp_path, capsys):
    """OFD cannot distil into MobileNetV2 (no pre-ReLU maps): in a grid that cell is skipped with its one line and
    the rest plans (and would train); alone, the same run is a one-line error."""
    grid = ["-m", "--config-dir", str(SWEEPS), "--config-name", "crd_benchmark", "hydra/launcher=cohort", "task=plan",
            "pair=vgg13_mv2,res56_res20", "method=ofd,kd", f"store={tmp_path}"]
    assert main(grid) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err  # the skip is a log line (Hydra's handler), the plan is printed
    assert "plan total: 3 runs in 2 cohort(s) after 2 teacher run(s); 1 job(s) skipped, their method refuses the pair" in out
    assert "skipped job #0, a pair its method refuses: method=ofd: student MobileNetV2 has no pre-ReLU" in out
    assert main(["method=ofd", "teacher=vgg13", "student=mobilenetv2", "dataset=cifar100", "task=plan",
                 f"store={tmp_path}"]) == 2


@pytest.mark.parametrize("methods", [["method=ce,kd,oracle"], STATEFUL[2]], ids=["kd-oracle", "crd-dot"])
def test_a_killed_cohort_relaunched_finishes_with_the_uninterrupted_numbers(solo, tmp_path, methods):
    """kill -9 of the launching process once the first student epoch is on disk (so in epoch 2, with CRD's bank
    and DOT's buffers moved since last.pt), then the same command."""
    store = tmp_path / "runs"
    cmd = [sys.executable, str(SWEEPS.parent / "run.py"), *QUICK, *methods, "hydra/launcher=cohort", f"store={store}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not any(p.stat().st_size for p in store.glob("digits/*/*/*/metrics.jsonl") if p.parts[-4] != "ce"):
        assert proc.poll() is None and time.time() < deadline, "the cohort ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    runs = 3 if "kd" in methods[0] else 2  # the students and their ce teacher
    assert len(list(store.rglob("result.json"))) < runs  # killed mid-cohort: students unfinished
    assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=600).returncode == 0
    assert same_as_solo(store, solo) and len(snapshot(store)) == runs


def test_a_member_with_a_non_finite_loss_fails_alone(tmp_path, capsys):
    """lr 1e30 blows one member up in its first epoch: it stops with one line, writes no epoch, no result;
    its cohort-mate finishes exactly as its solo run; alone, the same run is a one-line CLI error."""
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 10, 1).state_dict(), teacher)
    common = [*BASE, "method=kd", f"teacher.checkpoint={teacher}", "train.epochs=1"]
    good, bad = compose([*common, f"store={tmp_path / 'c'}"]), compose([*common, "train.lr=1e30", f"store={tmp_path / 'c'}"])
    results = run_cohort([good, bad])
    assert [r["status"] for r in results] == ["finished", "failed"]
    assert "non-finite loss at step" in results[1]["error"] and "in epoch 1" in results[1]["error"]
    failed = Path(results[1]["folder"])
    assert not (failed / "result.json").exists() and not (failed / "last.pt").exists()
    run(compose([*common, f"store={tmp_path / 's'}"]))
    assert snapshot(tmp_path / "c") == snapshot(tmp_path / "s")
    capsys.readouterr()
    assert main([*common, "train.lr=1e30", f"store={tmp_path / 'c'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: run ") and "non-finite loss at step" in err[0]
