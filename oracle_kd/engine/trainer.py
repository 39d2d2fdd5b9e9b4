"""The Trainer: one run = one folder in the store, trained epoch by epoch, resumable at any epoch.

What a run owns (`member.Member`: student, method extras, optimizer, schedule, train state, metrics, record)
is kept apart from what runs with the same data, seed, batch size and teacher share (`stream.Stream`: the
device, the dataset and its batch stream, the frozen teacher); the folder's states (finished, damaged,
failed) are `store.run_folder`'s. A solo run is one Member on one Stream; under DDP every rank runs the same
Trainer on its shard of each global batch and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from oracle_kd.config import RunConfig, check_ddp
from oracle_kd.core.teacher_view import PLAIN
from oracle_kd.data import DataBundle
from oracle_kd.engine import distributed
from oracle_kd.engine.cohort import check_cohort
from oracle_kd.engine.member import EpochMeter, Job, Member
from oracle_kd.engine.state import set_rng_state
from oracle_kd.engine.step import evaluate, set_lr
from oracle_kd.engine.stream import Stream, load_teacher
from oracle_kd.engine.teacher import (
    artefact_source_config,
    identify,
    needs,
    needs_teacher,
    teacher_run_config,
)
from oracle_kd.errors import ConfigError, OracleKDError, StoreError, TrainingError, from_scheduler, reason
from oracle_kd.store import record, run_folder
from oracle_kd.store.io import atomic_torch_save, atomic_write_json, run_lock
from oracle_kd.store.record import RunResult

log = logging.getLogger("oracle_kd")


def prerequisites(rc: RunConfig) -> list[tuple[RunConfig, str]]:
    """The runs that must be finished before `rc` trains, in order, each with the line logged when it is trained
    first: the source of the run's artefacts (where it has any), then the auto teacher."""
    out = []
    artefacts = [art.name for art in needs(rc).artefacts]
    if artefacts:
        src = artefact_source_config(rc)
        out.append((src, f"the ordinary teacher {src.student.arch}, which defines the run's {', '.join(artefacts)}, "
                         f"is not in the store: training it first (run {identify(src)[1]})"))
    if needs_teacher(rc) and rc.teacher.checkpoint == "auto":
        trc = teacher_run_config(rc)
        out.append((trc, f"teacher {rc.teacher.arch} on {rc.dataset.name} (seed {rc.seed}) is not in the store: "
                         f"training it first (run {identify(trc)[1]})"))
    return out


def obtain_teacher(rc: RunConfig, data: DataBundle, device: torch.device,
                   artefacts: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher, from the store (its run trained first if missing) or from a checkpoint file."""
    for prerequisite, line in prerequisites(rc):
        run(prerequisite, announce=line)
    return load_teacher(rc, data, device, artefacts)


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Trains runs that share one Stream (a cohort; a solo run is a cohort of one), each batch drawn once.

    Phases: setup → resume → (epoch → evaluate)* → finish; `fit` runs them. Members at different epochs
    (a relaunch after some had gone further) never share a batch across epochs: the laggards train alone
    until everyone is at the same epoch."""

    def __init__(self, jobs: list[Job], env: distributed.DistEnv, device_name: str) -> None:
        self.jobs, self.env, self.device_name = jobs, env, device_name

    def setup(self) -> None:
        """Open the stream (training an auto teacher first if needed), build the runs, then the loaders."""
        stream_rc = next((j.rc for j in self.jobs if needs_teacher(j.rc)), self.jobs[0].rc)
        self.stream = Stream.open(stream_rc, self.env, self.device_name)
        self.members = [Member.build(job, self.stream) for job in self.jobs]
        self.stream.open_loaders(self.jobs[0].rc)
        for m in self.members:
            m.write_config()
            if m.distiller.teacher is not None:
                m.teacher_info = self.stream.teacher_report(m.rc.train.eval_batch_size)

    def resume(self) -> None:
        for i, m in enumerate(self.members):
            if not m.resume(self.stream.device):  # last.pt was unreadable: the same run, built afresh
                fresh = Member.build(m.job, self.stream)
                fresh.teacher_info = m.teacher_info
                fresh.resume(self.stream.device)
                self.members[i] = fresh
        if len(self.members) == 1:  # a run alone owns the process RNG: its steps need no swap (`state.own_rng`)
            only = self.members[0]
            set_rng_state(only.rng)
            only.rng = None

    def epoch(self, epoch: int, group: list[Member], bar: Any,
              phase: str | None = None) -> tuple[list[EpochMeter], list[float]]:
        """One epoch of shared batches for `group`; returns each member's meter and its share of the time. In a
        later phase the batches are the phase's samples, labelled by the teacher's prediction on them."""
        s = self.stream
        loader = s.loader(phase)
        steps = len(loader)
        for m in group:
            set_lr(m.optimizer, m.lr(epoch))
            m.distiller.train()
        meters = [EpochMeter(s.device) for _ in group]
        own = [0.0] * len(group)
        wanted = [m.distiller.teacher_input() for m in group]  # once per epoch, not per step
        inputs = [i for i in wanted if i is not None]
        start = time.perf_counter()
        for step, batch in enumerate(loader.epoch(epoch)):
            global_batch = loader.global_batch_size(step) if s.env.active else None
            outs = s.teacher_outputs(inputs, batch.x, batch.y, global_batch)
            if phase is not None:  # every member's teacher sees the plain input (checked with the config)
                batch = batch.with_labels(outs[PLAIN][0].argmax(dim=1))
            for i, m in enumerate(group):
                t0 = time.perf_counter()
                m.step(batch, epoch, (step + 1) / steps, s, global_batch,
                       outs[wanted[i]] if wanted[i] is not None else None, meters[i])
                own[i] += time.perf_counter() - t0
            bar.update(len(group))
        total = time.perf_counter() - start
        shared = (total - sum(own)) / len(group)  # data and teacher: split evenly
        return meters, [(o + shared) / total if total > 0 else 1.0 / len(group) for o in own]

    def evaluate(self, m: Member, epoch: int, meter: EpochMeter, train_time: float,
                 cohort_time: float) -> dict[str, Any] | None:
        """Test the student, update the state, write the metrics row and last.pt; returns the row. A
        non-finite loss fails the member instead: nothing of this epoch is written, the others go on."""
        start = time.perf_counter()
        train_metrics = meter.totals(self.env)
        problem = meter.failure(train_metrics)
        if problem is not None:
            m.failed = (f"run {m.job.rid} ({m.label}): {problem} in epoch {epoch}; stopped, keeping its last "
                        f"checkpoint (epoch {m.state.epoch}) and writing no result")
            log.error("%s", m.failed)
            return None
        m.last_eval = evaluate(m.distiller.student, self.stream.test_loader(m.rc.train.eval_batch_size),
                               self.stream.amp, self.env)
        m.state.train_time_s += train_time
        m.state.cohort_time_s += cohort_time
        m.state.train_images += meter.seen
        m.state.record_eval(epoch, m.last_eval["top1"], m.last_eval["top5"])
        if m.state.best_epoch == epoch and m.main:  # before last.pt: a resume redoes this epoch, best.pt with it
            atomic_torch_save(m.job.folder / record.BEST, m.distiller.student.state_dict())
        m.state.epoch = epoch
        m.state.wall_time_s += train_time + time.perf_counter() - start
        row = {"epoch": epoch, "lr": m.lr(epoch), **train_metrics, "test_top1": m.last_eval["top1"],
               "test_top5": m.last_eval["top5"], "test_loss": m.last_eval["loss"], "epoch_time_s": train_time}
        m.save_epoch(row)
        stop = m.rc.stop_after_epoch
        if stop is not None and stop <= epoch < m.rc.train.total_epochs:
            m.stopped = True
            log.info("run %s stopped after epoch %d as asked (stop_after_epoch); relaunch to resume", m.job.rid, epoch)
        return row

    def finish(self, m: Member) -> dict[str, Any]:
        """model.pt, then result.json (written last: its presence means finished)."""
        m.curves.close()
        if m.stopped or m.failed is not None:
            if m.failed and m.main:
                run_folder.write_failure(m.job.folder, m.job.rid, m.failed)
            return {"run_id": m.job.rid, "status": "failed" if m.failed else "stopped", "epoch": m.state.epoch,
                    "folder": str(m.job.folder), **({"error": m.failed} if m.failed else {})}
        rc, s, st = m.rc, self.stream, m.state
        if not m.last_eval:  # a relaunch that found every epoch done but no result (died while finishing)
            m.last_eval = evaluate(m.distiller.student, s.test_loader(rc.train.eval_batch_size), s.amp, self.env)
        if m.main:
            if record.BEST in m.rebuilding:  # its best epoch is the last (checked when last.pt was read)
                atomic_torch_save(m.job.folder / record.BEST, m.distiller.student.state_dict())
            atomic_torch_save(m.job.folder / record.MODEL, m.distiller.student.state_dict())
        model_bytes = (m.job.folder / record.MODEL).stat().st_size if m.main else None
        hashes = record.file_hashes(m.job.folder) if m.main else None
        m.report_rebuilt(hashes)
        result = RunResult(
            run_id=m.job.rid, status="finished", folder=str(m.job.folder), dataset=rc.dataset.name,
            method=rc.method.name, student=rc.student.arch, teacher=m.teacher_info["arch"] if m.teacher_info else None,
            seed=rc.seed, best_top1=st.best_top1, best_top5=st.best_top5, best_epoch=st.best_epoch,
            last_top1=m.last_eval["top1"], last_top5=m.last_eval["top5"], last_test_loss=m.last_eval["loss"],
            epochs=rc.train.total_epochs, wall_time_s=st.wall_time_s, extra_params=m.distiller.extra_parameter_count(),
            train_images_per_s=st.train_images / max(st.train_time_s, 1e-9), teacher_info=m.teacher_info,
            semantic=m.job.semantic, config=rc.as_dict(), device=str(s.device), world_size=self.env.world_size,
            sync_bn=rc.hardware.sync_bn if self.env.active else None, torch_version=torch.__version__,
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            cohort={"size": len(self.members), "time_share": st.train_time_s / max(st.cohort_time_s, 1e-9)},
            model_bytes=model_bytes, student_params=sum(p.numel() for p in m.distiller.student.parameters()),
            sha256=hashes,
        ).to_json()
        if m.main:
            atomic_write_json(m.job.folder / record.RESULT, result)
        log.info("run %s finished: best top-1 %.2f (epoch %d), last %.2f, %.0f images/s", m.job.rid,
                 result["best_top1"], result["best_epoch"], result["last_top1"], result["train_images_per_s"])
        return result

    def _bar(self) -> Any:
        rc, n = self.jobs[0].rc, len(self.members)
        desc = f"{self.members[0].label} s{rc.seed}" if n == 1 else f"cohort of {n} on {rc.dataset.name} s{rc.seed}"

        def steps(m: Member, upto: int) -> int:  # steps in epochs 1..upto (a later phase has its own loader)
            return sum(len(self.stream.loader(m.phase_at(e))) for e in range(1, upto + 1))

        return tqdm(total=sum(steps(m, m.rc.train.total_epochs) for m in self.members),
                    initial=sum(steps(m, m.state.epoch) for m in self.members), mininterval=1.0, desc=desc,
                    disable=not (rc.progress and self.env.is_main), unit="step", dynamic_ncols=True)

    def fit(self) -> list[dict[str, Any]]:
        """All phases; a member stopped by `stop_after_epoch` returns {"status": "stopped", ...}."""
        self.setup()
        self.resume()
        for m in self.members:
            log.info("run %s: %s on %s, seed %d, %d epochs, %s%s%s -> %s", m.job.rid, m.label, m.rc.dataset.name,
                     m.rc.seed, m.rc.train.total_epochs, self.stream.device,
                     f" x {self.env.world_size} ranks (DDP)" if self.env.active else "",
                     f" (cohort of {len(self.members)})" if len(self.members) > 1 else "", m.job.folder)
        bar = self._bar()
        while any(m.training for m in self.members):
            epoch = min(m.state.epoch for m in self.members if m.training) + 1
            group = [m for m in self.members if m.training and m.state.epoch + 1 == epoch]
            phase = group[0].phase_at(epoch)  # one phase at a time: its members share one loader
            group = [m for m in group if m.phase_at(epoch) == phase]
            start = time.perf_counter()
            meters, shares = self.epoch(epoch, group, bar, phase)
            cohort_time = time.perf_counter() - start
            for m, meter, share in zip(group, meters, shares):
                row = self.evaluate(m, epoch, meter, cohort_time * share, cohort_time)
                if row is not None and len(group) == 1:
                    bar.set_postfix(loss=f"{row['train_loss']:.3f}", test=f"{row['test_top1']:.2f}",
                                    best=f"{m.state.best_top1:.2f}", refresh=False)
        bar.close()
        return [self.finish(m) for m in self.members]


def run(rc: RunConfig, announce: str | None = None) -> dict[str, Any]:
    """Run (or skip, or resume) one training run and return its result record: a cohort of one. A run
    that failed (non-finite loss) raises TrainingError, one line. `announce` is logged only if this process
    is the one that trains it (not one waiting for it, nor when it is finished)."""
    result = run_cohort([rc], announce)[0]
    if result["status"] == "failed":
        raise TrainingError(result["error"])
    return result


def run_cohort(rcs: list[RunConfig], announce: str | None = None) -> list[dict[str, Any]]:
    """Train runs that share their batch stream and teacher together (`check_cohort`); return their records
    in order. Finished runs are skipped, unfinished ones resume from last.pt. Each run's lock is held for
    the whole launch (in run_id order, so two overlapping cohorts cannot deadlock); under DDP rank 0 holds
    them for all ranks and alone writes the folders."""
    check_cohort(rcs)
    env, device_name = distributed.setup(rcs[0].hardware.ddp, rcs[0].hardware.device)
    ordered = [Job.of(rc) for rc in rcs]
    jobs = list({j.rid: j for j in ordered}.values())
    if env.active and len(jobs) > 1:
        raise ConfigError("a cohort of several runs trains in one process; DDP runs train one at a time")
    if env.active:
        check_ddp(jobs[0].rc)
    results: dict[str, dict[str, Any]] = {}
    if not env.active:  # finished runs need no lock (result.json is written last, atomically): a read-only store works
        results.update((j.rid, r) for j in jobs if (r := _stored(j, write=True)) is not None)
    pending = [j for j in jobs if j.rid not in results]
    for prerequisite, line in {identify(p)[1]: (p, ln) for j in pending for p, ln in prerequisites(j.rc)}.values():
        run(prerequisite, announce=line)  # each once, before any member's lock; a member may be one itself
    with contextlib.ExitStack() as locks:
        for job in sorted(pending, key=lambda j: j.rid):
            if env.is_main:
                locks.enter_context(run_lock(job.folder, on_wait=lambda rid=job.rid: log.info(
                    "run %s is being trained by another process: waiting", rid)))
        distributed.barrier(env)  # every rank now sees the folders as rank 0 found them
        results.update((j.rid, r) for j in pending if (r := _stored(j, write=env.is_main)) is not None)
        pending = [j for j in pending if j.rid not in results]
        if pending:
            if announce:
                log.info("%s", announce)
            try:
                results.update(zip((j.rid for j in pending), Trainer(pending, env, device_name).fit()))
            except Exception as exc:  # a data/device/config error: the runs are failed, not merely unfinished
                if env.is_main and not isinstance(exc, (StoreError, OSError)) and not from_scheduler(exc):
                    line = str(exc) if isinstance(exc, OracleKDError) else reason(exc)
                    for job in pending:
                        if job.folder.is_dir() and not (job.folder / record.RESULT).exists():
                            run_folder.write_failure(job.folder, job.rid, " ".join(line.split()))
                raise
        distributed.barrier(env)  # rank 0 has written the records before anyone moves on
    return [results[j.rid] for j in ordered]


def _stored(job: Job, write: bool) -> dict[str, Any] | None:
    """The stored record of a finished run (logged), or None. A record or a file it vouches for that is damaged
    marks the job for rebuilding from last.pt (`job.rebuild`) instead of training. A record written before the
    hashes gets them (`run_folder.add_hashes`)."""
    result, job.rebuild = run_folder.finished_record(job.folder)
    if result is not None:
        log.info("run %s (%s %s) is already finished: best top-1 %.2f, last %.2f — not training again",
                 job.rid, job.rc.method.name, job.rc.student.arch, result["best_top1"], result["last_top1"])
        result = run_folder.add_hashes(job.folder, result, write)
    return result


def run_status(rc: RunConfig) -> dict[str, Any]:
    """Where a run stands without touching it: finished, resumable (with its last epoch) or new."""
    _, rid, folder = identify(rc)
    return {"run_id": rid, "status": run_folder.status(folder), "folder": str(folder)}


__all__ = ["Job", "Member", "Stream", "Trainer", "obtain_teacher", "prerequisites", "run", "run_cohort", "run_status"]
