"""Hydra's submitit launcher on a real one-node SLURM cluster (tests/helpers/slurm_cluster.py: munged, MariaDB,
slurmdbd, slurmctld, slurmd started by hand in a temporary folder), end to end through `python run.py -m`:

- a small sweep as two parallel 1-CPU jobs equals the same sweep run locally, and `task=tables` tabulates it;
- a job SIGKILLed mid-run (its PIDs from `scontrol listpids`): the launcher returns (it learns the state from
  sacct), and the relaunched command ends with the uninterrupted run's numbers and weights;
- a job reaching its 1-minute time limit is signalled, requeued by submitit and resumed from its last epoch to
  the uninterrupted run's numbers;
- a DDP run as two SLURM tasks (gloo, CPU) is the single-process run (same run_id) within float rounding;
- the jobs' name in squeue/sacct.

Every test shares one cluster, so the module runs on one pytest-xdist worker (`--dist loadscope`).
Without the Debian packages (or root) the module is skipped with one line saying what to install. Each local
reference run goes in a background process while the SLURM job runs (the machine has 2 cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import slurm_cluster
from oracle_kd.cli import main

ROOT = Path(__file__).resolve().parents[2]

BASE = ["dataset=digits", "train=quick", "teacher=resnet8", "hardware=cpu", "progress=false", "seed=0"]
ONE_CPU = [*BASE, "hardware.threads=1"]  # what each 1-CPU job (and its local twin) runs with
SAME = ("run_id", "best_top1", "best_top5", "best_epoch", "last_top1", "last_top5", "last_test_loss", "epochs")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster, up for this module; SLURM_CONF set in os.environ meanwhile; stopped by PID at the end."""
    why = slurm_cluster.available()
    if why:
        pytest.skip(why)
    state = tmp_path_factory.mktemp("slurm")
    t0 = time.monotonic()
    env = slurm_cluster.start(state)
    print(f"\nslurm cluster up in {time.monotonic() - t0:.1f} s ({state})")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield state
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        slurm_cluster.stop(state)


@pytest.fixture(scope="module")
def quick_teacher(tmp_path_factory) -> Path:
    """A store holding the `teacher.train=quick` resnet8 teacher (12 epochs), trained once, here, without SLURM;
    each test copies it into its stores (the teacher's files are then the same for both runs compared)."""
    store = tmp_path_factory.mktemp("quick_teacher")
    assert main([f"store={store}", *BASE, "train=quick", "method=ce", "student=resnet8"]) == 0
    return store


@pytest.fixture(scope="module")
def slurm_sweep(cluster, tmp_path_factory):
    """`method=ce,kd` (the kd run's auto teacher is the ce run) as two parallel 1-CPU SLURM jobs, and the same
    sweep locally, in the background at the same time."""
    tmp = tmp_path_factory.mktemp("slurm_sweep")
    args = ["-m", *ONE_CPU, "train.epochs=2", "student=resnet8", "method=ce,kd"]
    local = spawn([*args, f"store={tmp / 'local'}", f"hydra.sweep.dir={tmp / 'local_sweep'}"], tmp / "local.log")
    t0 = time.monotonic()
    finish(spawn([*args, f"store={tmp / 'slurm'}", *launcher(tmp / "sweep")], tmp / "slurm.log"), tmp / "slurm.log")
    print(f"\nce,kd sweep through SLURM: {time.monotonic() - t0:.1f} s")
    finish(local, tmp / "local.log")
    return tmp


# ----------------------------------------------------------------------------- helpers
def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    """`python run.py <args>` from the repository root, in the background, output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=_env(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 420, ok: bool = True) -> str:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{' '.join(proc.args[2:])} still running after {timeout} s:\n"
                             f"{log.read_text()[-4000:]}") from None
    text = log.read_text()
    if ok:
        assert rc == 0, text[-4000:]
    return text


def launcher(sweep: Path, **params) -> list[str]:
    """The submitit_slurm launcher on the test partition, 1 CPU a task; its files under `sweep`."""
    opts = {"partition": slurm_cluster.PARTITION, "cpus_per_task": 1, "timeout_min": 10, **params}
    return ["hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep}",
            f"hydra.launcher.submitit_folder={sweep}/.submitit/%j", *(f"hydra.launcher.{k}={v}" for k, v in opts.items())]


def job_ids(sweep: Path) -> list[str]:
    """The SLURM job ids (array ids for a sweep) that submitit made under `sweep`."""
    return sorted({p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if p.is_dir()}, key=int)


def sacct(*args: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-n", "-P", *args], capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


ACTIVE = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD"}


def accounting(job: str, fields: str, steps: bool = False) -> list[list[str]]:
    """sacct's rows for `job` (-D: every start of a requeued job; its steps too with `steps`), once none is
    active: the launcher can return (result files written) before the job's end reaches the database."""
    deadline = time.monotonic() + 30
    while True:
        rows = sacct("-D", *(() if steps else ("-X",)), "-j", job, "-o", f"State,{fields}")
        if not any(r[0] in ACTIVE for r in rows) or time.monotonic() > deadline:
            return [r[1:] for r in rows]
        time.sleep(0.2)


def with_teacher(teacher: Path, store: Path) -> Path:
    shutil.copytree(teacher, store, ignore=shutil.ignore_patterns(".hydra"))
    return store


def records(store: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in (json.loads(p.read_text()) for p in store.rglob("result.json"))}


def rows(rec: dict) -> list[dict]:
    """metrics.jsonl without its timings."""
    lines = (Path(rec["folder"]) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"} for line in lines]


def weights(rec: dict) -> dict[str, torch.Tensor]:
    return torch.load(Path(rec["folder"]) / "model.pt", weights_only=True)


def wait_for_checkpoint(launch: subprocess.Popen, store: Path, log: Path) -> Path:
    """The kd run's folder, once the job has a checkpoint (last.pt, >= 1 metrics row) and is not finished."""
    deadline = time.monotonic() + 180
    while True:
        assert launch.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        metrics = [p for p in store.rglob("metrics.jsonl") if "kd" in p.parts]
        if metrics and metrics[0].read_text().count("\n") >= 1 and (metrics[0].parent / "last.pt").exists():
            return metrics[0].parent
        time.sleep(0.05)


def assert_same_run(a: dict, b: dict) -> None:
    """Bit-identical: the record's numbers, every metrics row, every tensor of model.pt."""
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}
    assert rows(a) == rows(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ----------------------------------------------------------------------------- a. a sweep, tabulated
def test_a_sweep_through_slurm_equals_the_local_sweep_and_tabulates(slurm_sweep):
    tmp = slurm_sweep
    slurm, local = records(tmp / "slurm"), records(tmp / "local")
    assert slurm.keys() == local.keys() and len(slurm) == 2  # the same run_id folders
    for rid, rec in slurm.items():
        assert Path(rec["folder"]).relative_to(tmp / "slurm") == Path(local[rid]["folder"]).relative_to(tmp / "local")
        assert_same_run(rec, local[rid])
        assert len(rows(rec)) == 2  # the ce run, the kd job's auto teacher too, was trained once (the run lock)
    by_method = {r["method"]: r for r in slurm.values()}
    assert by_method["kd"]["teacher_info"]["source"] == f"run {by_method['ce']['run_id']}"
    assert by_method["ce"]["best_top1"] > 30  # learned something in 2 epochs (chance: 10 %)

    (array,) = job_ids(tmp / "sweep")
    jobs = accounting(array, "JobID,State,AllocCPUS")
    assert sorted(jobs) == [[f"{array}_0", "COMPLETED", "1"], [f"{array}_1", "COMPLETED", "1"]]

    out = tmp / "results"
    assert main([f"store={tmp / 'slurm'}", f"results_dir={out}", "task=tables"]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["run_id"]) == sorted(slurm)
    for row in runs.itertuples():
        assert row.best_top1 == pytest.approx(slurm[row.run_id]["best_top1"], abs=1e-4)
    t4 = pd.read_csv(out / "table4.csv")  # teacher = student: the ce run is the teacher row
    assert list(t4["method"]) == ["teacher", "kd"]
    assert list(t4["digits/resnet8 best_top1_mean"]) == pytest.approx(
        [by_method["ce"]["best_top1"], by_method["kd"]["best_top1"]], abs=1e-4)
    md = (out / "table4.md").read_text()
    assert f"{by_method['kd']['best_top1']:.2f}" in md and f"{by_method['ce']['best_top1']:.2f}" in md


# ----------------------------------------------------------------------------- b. SIGKILL, relaunch
KILLED_EPOCHS = 8  # the kill comes after the first epoch, about 0.5 s apart on one core


def test_b_job_killed_mid_run_resumes_on_relaunch_to_the_uninterrupted_run(cluster, quick_teacher, tmp_path):
    args = [*ONE_CPU, "student=resnet8", "method=kd", "teacher.train=quick", f"train.epochs={KILLED_EPOCHS}"]
    ref = spawn([*args, f"store={with_teacher(quick_teacher, tmp_path / 'local')}"], tmp_path / "local.log")
    store = with_teacher(quick_teacher, tmp_path / "slurm")
    command = ["-m", *args, f"store={store}", *launcher(tmp_path / "sweep")]
    t0 = time.monotonic()
    launch = spawn(command, tmp_path / "launch1.log")
    folder = wait_for_checkpoint(launch, store, tmp_path / "launch1.log")
    (job,) = job_ids(tmp_path / "sweep")
    listed = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, check=True).stdout
    pids = [int(line.split()[0]) for line in listed.splitlines()[1:] if line.split()]
    assert len(pids) >= 2  # the batch script, srun, the python task
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed = time.monotonic()
    done = len((folder / "metrics.jsonl").read_text().splitlines())

    text = finish(launch, tmp_path / "launch1.log", timeout=180, ok=False)
    print(f"\nkilled {killed - t0:.1f} s after the launch, after epoch {done}; "
          f"the launcher returned {time.monotonic() - killed:.1f} s later (exit {launch.returncode})")
    assert launch.returncode == 2 and "Traceback" not in text, text[-4000:]  # one line, as every error
    (line,) = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert line.startswith(f"error: a SLURM job ended without its result (job {job}, state FAILED); ") and \
        line.endswith("relaunch the same command: finished runs are skipped and the "
                                                     "others resume from last.pt")
    ((state, code),) = accounting(job, "State,ExitCode")
    assert state == "FAILED", code  # measured: exit code 0:9, the SIGKILL
    assert 1 <= done < KILLED_EPOCHS and not (folder / "result.json").exists()

    relaunch = finish(spawn(command, tmp_path / "launch2.log"), tmp_path / "launch2.log")
    assert "has not produced" not in relaunch
    finish(ref, tmp_path / "local.log")
    slurm, local = records(store), records(tmp_path / "local")
    assert slurm.keys() == local.keys() and len(slurm) == 2  # teacher + student
    rid = next(r for r in slurm if slurm[r]["method"] == "kd")
    log = "\n".join((p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.out")))
    assert re.search(rf"resuming run {rid} from epoch \d+/{KILLED_EPOCHS}", log), log[-3000:]
    assert_same_run(slurm[rid], local[rid])


# ----------------------------------------------------------------------------- c. time limit, requeue
# The job asks for 1 minute and submitit for SIGUSR2 5 s before the end; slurmctld checks time limits every 30 s
# and signals up to 30 s early, so the signal comes 25-55 s after the job started. A run that finishes before
# then is never signalled, and how many epochs take 55 s depends on the machine. So the test pauses the job's
# Python task (SIGSTOP) once it has a checkpoint, waits until slurmctld's SIGUSR2 is pending in the task
# (/proc/<pid>/status; slurmstepd also sends SIGCONT with it), and lets it go on: the task then handles the
# time-limit signal as it would have while training. submitit requeues it (slurm holds a requeued job for
# cred_expire + 1 = 6 s) and the next start resumes from last.pt and finishes within its minute.
LIMITED_EPOCHS = 6
SIGUSR2_BIT = 1 << (signal.SIGUSR2 - 1)


def python_task(job: str) -> int:
    """The PID of the job step's Python process (`python -u -m submitit.core._submit <folder>`), among `scontrol
    listpids`: not the batch script, nor srun, whose command lines name the same module."""
    listed = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, check=True).stdout
    for line in listed.splitlines()[1:]:
        pid = int(line.split()[0]) if line.split() else 0
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid else []
        except OSError:
            continue
        if argv and Path(argv[0].decode()).name.startswith("python") and b"submitit.core._submit" in argv:
            return pid
    raise AssertionError(f"no submitit task among the job's processes:\n{listed}")


def _status(pid: int) -> dict[str, str] | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return None
    return dict(line.split(":", 1) for line in lines if ":" in line)


def paused_until_signalled(pid: int, timeout: float = 120) -> None:
    """Stop the task (SIGSTOP) and wait while it has no SIGUSR2 pending. slurmstepd follows the signal with
    SIGCONT, so the task may also be running again (or gone) by the time this looks."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    stopped = False
    while time.monotonic() < deadline:
        fields = _status(pid)
        if fields is None:
            return
        state = fields["State"].split()[0]
        if not stopped:  # SIGSTOP takes effect asynchronously
            stopped = state == "T"
        elif state != "T" or any(int(fields[k], 16) & SIGUSR2_BIT for k in ("SigPnd", "ShdPnd")):
            return
        time.sleep(0.05)
    raise AssertionError(f"slurmctld sent no SIGUSR2 within {timeout} s")


def test_c_job_at_its_time_limit_is_requeued_and_resumes_to_the_uninterrupted_run(cluster, quick_teacher, tmp_path):
    args = [*ONE_CPU, "student=resnet8", "method=kd", "teacher.train=quick", f"train.epochs={LIMITED_EPOCHS}"]
    ref = spawn([*args, f"store={with_teacher(quick_teacher, tmp_path / 'local')}"], tmp_path / "local.log")
    store = with_teacher(quick_teacher, tmp_path / "slurm")
    t0 = time.monotonic()
    launch = spawn(["-m", *args, f"store={store}", *launcher(tmp_path / "sweep", timeout_min=1, signal_delay_s=5,
                                                             max_num_timeout=6)], tmp_path / "slurm.log")
    wait_for_checkpoint(launch, store, tmp_path / "slurm.log")
    (job,) = job_ids(tmp_path / "sweep")
    pid = python_task(job)
    try:
        paused_until_signalled(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    signalled_after = time.monotonic() - t0
    finish(launch, tmp_path / "slurm.log")
    wall = time.monotonic() - t0
    states = [s for (s,) in accounting(job, "State")]  # every start of the job
    log = "\n".join((p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.out")))
    resumed = [int(e) for e in re.findall(rf"resuming run \w+ from epoch (\d+)/{LIMITED_EPOCHS}", log)]
    print(f"\ntime-limited job {job}: signalled {signalled_after:.1f} s after the launch, {wall:.1f} s in all, "
          f"states {states}, resumed after epochs {resumed}")
    assert len(states) >= 2 and set(states[:-1]) == {"REQUEUED"} and states[-1] == "COMPLETED"
    signalled = re.findall(r"^submitit WARNING .* Caught signal SIGUSR2 .* timed-out", log, re.M)
    assert len(signalled) == len(re.findall(r"^submitit INFO .* Requeued job", log, re.M)) == len(states) - 1
    assert len(resumed) == len(states) - 1 and all(0 < e < LIMITED_EPOCHS for e in resumed), log[-3000:]

    finish(ref, tmp_path / "local.log")
    slurm, local = records(store), records(tmp_path / "local")
    assert slurm.keys() == local.keys() and len(slurm) == 2
    rid = next(r for r in slurm if slurm[r]["method"] == "kd")
    assert_same_run(slurm[rid], local[rid])


# ----------------------------------------------------------------------------- d. DDP as SLURM tasks
# As tests/integration/test_ddp.py: the eager NCHW path at batch 62 (an uneven last batch of 45 images), in
# float64, where the two runs differ by the order of float64 sums only: the same bound holds on every CPU and
# thread count (its derivation is in test_ddp.py).
DDP_ARGS = [*ONE_CPU, "student=resnet8", "method=ce", "train.epochs=2", "train.batch_size=62",
            "hardware.channels_last=false", "hardware.fold_teacher_bn=false", "hardware.precision=fp64"]
FP64_REL = 1e-11


def test_d_ddp_as_two_slurm_tasks_is_the_single_process_run(cluster, tmp_path):
    ref = spawn([*DDP_ARGS, f"store={tmp_path / 'single'}"], tmp_path / "single.log")
    t0 = time.monotonic()
    finish(spawn(["-m", *DDP_ARGS, "hardware.ddp=true", f"store={tmp_path / 'ddp'}",
                  *launcher(tmp_path / "sweep", tasks_per_node=2, nodes=1)], tmp_path / "ddp.log"), tmp_path / "ddp.log")
    wall = time.monotonic() - t0
    finish(ref, tmp_path / "single.log")
    (job,) = job_ids(tmp_path / "sweep")
    steps = {s[0]: s[1:] for s in accounting(job, "JobID,State,NTasks", steps=True)}
    assert steps[f"{job}.0"] == ["COMPLETED", "2"]  # one step of two tasks: the two ranks
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / ".hydra").is_dir()) == ["0", "0-rank1"]

    single, ddp = records(tmp_path / "single"), records(tmp_path / "ddp")
    assert single.keys() == ddp.keys() and len(ddp) == 1  # the same run_id
    (rid,) = ddp
    s, d = single[rid], ddp[rid]
    assert (s["world_size"], d["world_size"]) == (1, 2)
    rows_s, rows_d = rows(s), rows(d)
    assert [r["epoch"] for r in rows_d] == [1, 2]
    ws, wd = weights(s), weights(d)
    diff = {k: (wd[k].double() - ws[k].double()).abs().max().item() for k in ws if ws[k].is_floating_point()}
    worst = max(diff, key=diff.get)
    rel = {key: [abs(rd[key] - rs[key]) / abs(rs[key]) for rs, rd in zip(rows_s, rows_d)]
           for key in ("train_loss", "test_loss")}
    print(f"\nDDP job {job} (2 tasks): {wall:.1f} s; vs single process: weights max |diff| {diff[worst]:.2e} ({worst}), "
          f"train_loss rel {rel['train_loss'][0]:.1e}/{rel['train_loss'][1]:.1e}, "
          f"test_loss rel {rel['test_loss'][0]:.1e}/{rel['test_loss'][1]:.1e} (epochs 1/2), "
          f"best_top1 {s['best_top1']:.4f} vs {d['best_top1']:.4f}")
    for rs, rd in zip(rows_s, rows_d):
        for key in ("train_top1", "test_top1", "test_top5"):  # counts of images: equal
            assert rd[key] == rs[key], key
    assert max(max(r) for r in rel.values()) < FP64_REL, rel
    assert (d["best_top1"], d["best_epoch"]) == (s["best_top1"], s["best_epoch"])
    assert diff[worst] < FP64_REL  # measured 1.6e-15 on a 2-core AMD EPYC


# ----------------------------------------------------------------------------- e. the job name
def test_e_slurm_jobs_are_named_after_oracle_kd(slurm_sweep):
    names = sorted({name for (name,) in sacct("-X", "-j", ",".join(job_ids(slurm_sweep / "sweep")), "-o", "JobName")})
    print(f"\nSLURM job names: {names}")
    assert names and all(name.startswith("oracle-kd") for name in names), names


# ----------------------------------------------------------------------------- f. one SLURM job per cohort
def test_f_the_cohort_launcher_submits_one_slurm_job_per_cohort(cluster, tmp_path):
    """`hydra/launcher=cohort_slurm`: seeds 0 and 1 x {ce, kd, oracle} are two cohorts (one per seed: the ce run
    is the others' auto teacher), hence two SLURM jobs named after them, whose records equal the same sweep
    trained on this machine by the local cohort launcher."""
    args = ["-m", *(a for a in ONE_CPU if a != "seed=0"), "seed=0,1", "train.epochs=2", "student=resnet8",
            "method=ce,kd,oracle"]
    local = spawn([*args, "hydra/launcher=cohort", f"store={tmp_path / 'local'}",
                   f"hydra.sweep.dir={tmp_path / 'local_sweep'}"], tmp_path / "local.log")
    sweep = tmp_path / "sweep"
    opts = launcher(sweep)
    opts[0] = "hydra/launcher=cohort_slurm"
    t0 = time.monotonic()
    text = finish(spawn([*args, f"store={tmp_path / 'slurm'}", *opts], tmp_path / "slurm.log"), tmp_path / "slurm.log")
    print(f"\ncohort_slurm sweep (2 cohorts of 3 runs): {time.monotonic() - t0:.1f} s")
    finish(local, tmp_path / "local.log")
    jobs = job_ids(sweep)
    assert len(jobs) == 2 and len(re.findall(r"SLURM job \d+: jobs #", text)) == 2, text[-3000:]
    names = sorted(name for (name,) in sacct("-X", "-j", ",".join(jobs), "-o", "JobName"))
    assert names == ["oracle-kd-resnet8-s0-3runs", "oracle-kd-resnet8-s1-3runs"]
    assert [s for (s,) in accounting(",".join(jobs), "State")] == ["COMPLETED"] * 2
    slurm, local_records = records(tmp_path / "slurm"), records(tmp_path / "local")
    assert slurm.keys() == local_records.keys() and len(slurm) == 6
    for rid, rec in slurm.items():
        assert_same_run(rec, local_records[rid])
    assert sorted(r["method"] for r in slurm.values() if r.get("cohort", {}).get("size") == 2) == \
        ["kd", "kd", "oracle", "oracle"]  # the ce runs trained first, as teachers; the students together
