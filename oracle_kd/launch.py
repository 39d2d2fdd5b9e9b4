"""The cohort launcher's logic: a multirun's training jobs grouped into cohorts and trained together.

`hydra/launcher=cohort` (hydra_plugins/oracle_kd_cohort) composes every job, then asks here for one task
function per job: training jobs are grouped (`group_cohorts`), each cohort is trained in this process
(`run_cohort`: missing auto teachers first, each once), and each job's function returns its run's record,
so Hydra still gets one result per job. Other tasks run as their own function; `task=plan` first prints
the cohorts the sweep would train."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Callable

from omegaconf import DictConfig

from oracle_kd.config import RunConfig, validate
from oracle_kd.engine.cohort import describe, group_cohorts
from oracle_kd.engine.teacher import identify, needs_teacher, teacher_run_config
from oracle_kd.engine.trainer import run_cohort, run_status
from oracle_kd.errors import OracleKDError, PairRefused, TrainingError, require

log = logging.getLogger("oracle_kd")
TaskFn = Callable[[DictConfig], Any]


def _returning(value: Any) -> TaskFn:
    return lambda cfg: value


def _raising(exc: BaseException) -> TaskFn:
    def fn(cfg: DictConfig) -> Any:
        raise exc

    return fn


def print_plan(rcs: list[RunConfig], max_members: int | None, refused: int = 0) -> None:
    """The teachers a sweep trains first, then its cohorts with their members' methods and students, then the
    totals (runs, cohorts, and the `refused` jobs whose method cannot distil their pair). Jobs that name the same run
    (the plain `ce` student of two pairs with one student) count once, as they train once."""
    jobs = len(rcs)
    rcs = list({identify(rc)[1]: rc for rc in rcs}.values())
    teachers = {}
    for rc in rcs:
        if needs_teacher(rc) and rc.teacher.checkpoint == "auto":
            st = run_status(teacher_run_config(rc))
            teachers.setdefault(st["run_id"], (rc.teacher.arch, rc.dataset.name, rc.seed, st["status"]))
    for rid, (arch, dataset, seed, status) in teachers.items():
        print(f"plan teacher: {arch} on {dataset} seed={seed} run {rid}: {status} (trained first, once)")
    groups = group_cohorts(rcs, max_members)
    for k, group in enumerate(groups, 1):
        members = [rcs[i] for i in group]
        d = describe(members)
        methods = Counter(m.method.name for m in members)
        students = dict.fromkeys(m.student.arch for m in members)
        print(f"plan cohort {k}/{len(groups)}: {d['size']} runs, teacher {d['teacher'] or 'none'}, {d['dataset']} "
              f"seed={d['seed']} batch={d['batch_size']}; methods "
              + ", ".join(f"{name} x{n}" for name, n in sorted(methods.items())) + "; students " + ", ".join(students),
              flush=True)
    skipped = f"; {refused} job(s) skipped, their method refuses the pair (said above)" if refused else ""
    if jobs > len(rcs):
        skipped += f"; {jobs - len(rcs)} job(s) name a run another job names (trained once)"
    print(f"plan total: {len(rcs)} runs in {len(groups)} cohort(s) after {len(teachers)} teacher run(s){skipped}",
          flush=True)


class SweepProgress:
    """How far a sweep is: runs done, how many were already finished (skipped) or resumed, how many failed (not
    done: a relaunch retries them), how many are left, and an ETA from the measured time per trained run so far
    (one line after each cohort)."""

    def __init__(self, rcs: list[RunConfig]) -> None:
        self.states = [run_status(rc)["status"] for rc in rcs]  # read once, at the start of the sweep
        self.total, self.done, self.failed, self.trained, self.seconds = len(rcs), 0, 0, 0, 0.0
        self.finished = sum(s.startswith("finished") for s in self.states)
        self.resumed = sum(s.startswith("resumable") for s in self.states)
        log.info("sweep: %d training runs: %d finished already (skipped), %d to resume, %d new", self.total,
                 self.finished, self.resumed, self.total - self.finished - self.resumed)

    def cohort_done(self, members: list[int], seconds: float, failed: int = 0) -> str:
        """Count a cohort that ended (`members`: indices into the sweep's runs, `failed` of them failed) and log
        where the sweep is; the time per run is measured over the members that were not finished before."""
        self.done += len(members) - failed
        self.failed += failed
        self.trained += sum(not self.states[k].startswith("finished") for k in members)
        self.seconds += seconds
        left = self.total - self.done - self.failed
        eta = ""
        if left and self.trained:
            per_run = self.seconds / self.trained
            eta = f", ETA {_duration(per_run * left)} ({per_run:.0f} s per run measured)"
        failures = f", {self.failed} failed" if self.failed else ""
        line = f"sweep: {self.done}/{self.total} runs done{failures}, {left} left{eta}"
        log.info("%s", line)
        return line


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def cohort_task_functions(configs: list[DictConfig], task_function: TaskFn,
                          max_members: int | None) -> list[TaskFn]:
    """One task function per job: training jobs return their cohort's record for them."""
    require(max_members is None or max_members >= 1, "hydra.launcher.max_members", max_members, "must be >= 1 or null")
    rcs: dict[int, RunConfig] = {}
    functions: dict[int, TaskFn] = {}
    refused: list[int] = []
    for i, cfg in enumerate(configs):
        try:
            rcs[i] = validate(cfg)
        except PairRefused as exc:  # a blank cell of the grid: said once, skipped, the sweep goes on
            log.warning("skipped job #%s, a pair its method refuses: %s", cfg.hydra.job.num, exc)
            refused.append(i)
            functions[i] = _returning({"status": "refused", "reason": str(exc)})
        except OracleKDError as exc:  # this job fails with its one-line error; the others go on
            functions[i] = _raising(exc)
    plans = [i for i, rc in rcs.items() if rc.task == "plan"]
    if plans:
        print_plan([rcs[i] for i in plans], max_members, len(refused))
    train = [i for i, rc in rcs.items() if rc.task == "train"]
    progress = SweepProgress([rcs[i] for i in train]) if train else None
    for group in group_cohorts([rcs[i] for i in train], max_members):
        jobs = [train[k] for k in group]
        log.info("cohort of %d run(s): jobs %s", len(jobs), ", ".join(f"#{configs[i].hydra.job.num}" for i in jobs))
        start = time.perf_counter()
        outcomes = _cohort_outcomes([rcs[i] for i in jobs])
        failed = sum(isinstance(o, OracleKDError) for o in outcomes)
        progress.cohort_done(group, time.perf_counter() - start, failed)
        functions.update((i, _raising(o) if isinstance(o, OracleKDError) else _returning(o))
                         for i, o in zip(jobs, outcomes))
    return [functions.get(i, task_function) for i in range(len(configs))]


def _cohort_outcomes(members: list[RunConfig]) -> list[Any]:
    """Train a cohort: each member's record, or the one-line error it failed with (every member's, when the
    cohort could not start)."""
    try:
        results = run_cohort(members)
    except OracleKDError as exc:
        return [exc] * len(members)
    return [TrainingError(r["error"]) if r["status"] == "failed" else r for r in results]


def cluster_groups(configs: list[DictConfig], max_members: int | None) -> tuple[list[list[int]], list[int]]:
    """How `hydra/launcher=cohort_slurm` splits a multirun: groups of job indices, one SLURM job each (every
    cohort of training jobs; every other job alone), and the jobs to run where the sweep was launched (task=plan,
    which only prints, and jobs whose config is invalid, which fail at once with their one-line error)."""
    require(max_members is None or max_members >= 1, "hydra.launcher.max_members", max_members, "must be >= 1 or null")
    rcs: dict[int, RunConfig] = {}
    here: list[int] = []
    for i, cfg in enumerate(configs):
        try:
            rcs[i] = validate(cfg)
        except OracleKDError:
            here.append(i)
    here += [i for i, rc in rcs.items() if rc.task == "plan"]
    train = [i for i, rc in rcs.items() if rc.task == "train"]
    groups = [[train[k] for k in g] for g in group_cohorts([rcs[i] for i in train], max_members)]
    groups += [[i] for i, rc in rcs.items() if rc.task not in ("train", "plan")]
    return sorted(groups, key=lambda g: g[0]), sorted(here)


def cluster_job_name(configs: list[DictConfig]) -> str:
    """A SLURM job name that says what the job trains (squeue shows it): `oracle-kd-<teacher>-s<seed>-<n>runs`
    for a cohort, `oracle-kd-<method>-<teacher>-<student>-s<seed>` for a lone run, `oracle-kd-<task>` else."""
    rcs = [validate(cfg) for cfg in configs]
    rc = rcs[0]
    if rc.task != "train":
        return f"oracle-kd-{rc.task}"
    d = describe(rcs)
    if len(rcs) == 1:
        return f"oracle-kd-{rc.method.name}-{d['teacher'] or 'none'}-{rc.student.arch}-s{rc.seed}"
    return f"oracle-kd-{d['teacher'] or 'none'}-s{d['seed']}-{len(rcs)}runs"
