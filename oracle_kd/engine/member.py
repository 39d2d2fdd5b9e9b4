"""What one run owns in a cohort: its folder and identity (`Job`), and its student, method extras, optimizer,
schedule, train state and metrics (`Member`), with the per-epoch meter of its loss terms."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from oracle_kd.config import RunConfig
from oracle_kd.core.batch import Batch
from oracle_kd.core.needs import Phase
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import TeacherOut
from oracle_kd.engine import distributed
from oracle_kd.engine.curves import Curves
from oracle_kd.engine.hardware import in_run_dtype, prepare_model
from oracle_kd.engine.loggers import open_curves
from oracle_kd.engine.state import TrainState, load_checkpoint, own_rng, rng_state, save_checkpoint, seed_everything
from oracle_kd.engine.step import ForwardTrain, lr_at, make_optimizer, set_lr, train_step
from oracle_kd.engine.stream import Stream
from oracle_kd.engine.teacher import build_run_model, identify, needs
from oracle_kd.errors import StoreError, reason
from oracle_kd.methods import Distiller, build_distiller
from oracle_kd.store import record, run_folder
from oracle_kd.store.io import append_metrics, atomic_write_json, file_sha256, read_metrics, write_metrics

log = logging.getLogger("oracle_kd")


class EpochMeter:
    """Per-epoch sums of the loss terms and correct predictions, kept on the device (no per-step sync)."""

    def __init__(self, device: torch.device) -> None:
        self.sums: dict[str, Any] = {}
        self.correct = torch.zeros((), device=device)
        self.seen = 0
        self.steps = 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss

    @torch.no_grad()
    def add(self, logits: torch.Tensor, losses: dict[str, torch.Tensor], loss: torch.Tensor, y: torch.Tensor,
            global_batch: int | None) -> None:
        bad = ~torch.isfinite(loss.detach())  # any non-finite term makes the total non-finite
        self.first_bad = torch.where((self.first_bad < 0) & bad, self.steps, self.first_bad)
        self.steps += 1
        b = y.numel()
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0) + at_least_fp32(v.detach()) * b
        self.sums["loss"] = self.sums.get("loss", 0) + at_least_fp32(loss.detach()) * b
        self.correct += (logits.argmax(dim=1) == y).sum()
        self.seen += global_batch or b

    def totals(self, env: distributed.DistEnv) -> dict[str, float]:
        names = list(self.sums)
        totals = distributed.all_reduce_sum(torch.stack([*(self.sums[k] for k in names), self.correct.float()]),
                                            env).tolist()
        out = {f"train_{k}": v / self.seen for k, v in zip(names, totals)}
        out["train_top1"] = 100.0 * totals[-1] / self.seen
        return out

    def failure(self, totals: dict[str, float]) -> str | None:
        """What went non-finite this epoch (first step, loss terms), or None."""
        terms = [k.removeprefix("train_") for k, v in totals.items() if not math.isfinite(v)]
        if not terms:
            return None
        step = int(self.first_bad.item())
        return f"non-finite loss at step {step + 1 if step >= 0 else '?'} (terms: {', '.join(terms)})"


@dataclass
class Job:
    """A run to train: its config and identity."""

    rc: RunConfig
    semantic: dict[str, Any]
    rid: str
    folder: Path
    rebuild: str | None = None  # why its finished record is unusable: it is rebuilt from last.pt, never retrained

    @classmethod
    def of(cls, rc: RunConfig) -> "Job":
        return cls(rc, *identify(rc))


@dataclass
class Member:
    """One run's own part: its folder and record, student + method extras, optimizer, schedule and state."""

    job: Job
    main: bool
    distiller: Distiller
    forward_train: ForwardTrain
    optimizer: torch.optim.Optimizer
    teacher_info: dict[str, Any] | None = None
    state: TrainState = field(default_factory=TrainState)
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics rows so far (also kept in last.pt)
    last_eval: dict[str, float] = field(default_factory=dict)
    stopped: bool = False
    failed: str | None = None
    curves: Curves = field(default_factory=Curves)  # the `logger` (engine/loggers.py), opened by resume
    phases: list[Phase] = field(default_factory=list)  # after the main epochs, in order (`core.needs`)
    rebuilding: dict[str, str] = field(default_factory=dict)  # damaged file -> its recorded SHA-256 ("" if none)
    rng: dict[str, Any] | None = None  # this run's RNG state: its steps run on it (`state.own_rng`), last.pt keeps it

    @classmethod
    def build(cls, job: Job, stream: Stream) -> "Member":
        """Seed, then build the student and the method (a shape probe may draw from the RNG) on the device."""
        rc = job.rc
        seed_everything(rc.seed)
        data, device = stream.data, stream.device
        student = prepare_model(build_run_model(rc.student.arch, rc.student.stem, data, stream.artefacts), device,
                                rc.hardware)
        teacher = stream.teacher_for(rc)
        # the method's own modules (regressors, connectors) in the run's dtype too
        distiller = in_run_dtype(build_distiller(rc.method, student, teacher, data=stream.data_info()).to(device),
                                 rc.hardware.precision)
        forward_train = distributed.wrap_for_training(distiller, stream.env, device, sync_bn=rc.hardware.sync_bn)
        optimizer = make_optimizer(distiller.trainable_parameters(), rc.train)
        return cls(job, stream.env.is_main, distiller, forward_train, optimizer, phases=needs(rc).phases,
                   rng=rng_state())  # where a solo run's RNG stands after its build

    @property
    def rc(self) -> RunConfig:
        return self.job.rc

    @property
    def label(self) -> str:
        teacher = self.rc.teacher.arch if self.distiller.teacher is not None else "none"
        return f"{self.rc.method.name} {teacher}->{self.rc.student.arch}"

    def phase_at(self, epoch: int) -> str | None:
        """The phase (1-based) `epoch` belongs to: None for the main epochs, else a later phase's name."""
        end = self.rc.train.epochs
        for phase in self.phases:
            if epoch <= end:
                break
            end += phase.epochs
            if epoch <= end:
                return phase.name
        return None

    def lr(self, epoch: int, progress: float = 1.0) -> float:
        """The schedule's rate (`lr_at`), or a later phase's own rate where it sets one."""
        name = self.phase_at(epoch)
        phase = next((p for p in self.phases if p.name == name), None)
        if phase is not None and phase.lr > 0:
            return phase.lr
        return lr_at(self.rc.train, epoch, progress)

    @property
    def training(self) -> bool:
        """Epochs left, not stopped by stop_after_epoch, not failed."""
        return not self.stopped and self.failed is None and self.state.epoch < self.rc.train.total_epochs

    def write_config(self) -> None:
        if self.main:
            atomic_write_json(self.job.folder / record.CONFIG, {"run_id": self.job.rid, "semantic": self.job.semantic,
                                                                "config": self.rc.as_dict()})

    def resume(self, device: torch.device) -> bool:
        """Continue from last.pt, or start clean; metrics.jsonl is rewritten from the checkpoint's rows. Under
        the run's lock, so stale temp files and a previous launch's failure.json are cleared first.

        Returns False when last.pt is unreadable: it is set aside as last.pt.corrupt and the caller builds
        the member afresh (restart from epoch 0). A run whose finished record must be rebuilt (`job.rebuild`)
        is never retrained: without a complete last.pt that is a StoreError."""
        folder, rid, epochs = self.job.folder, self.job.rid, self.rc.train.total_epochs
        metrics, ckpt = folder / record.METRICS, folder / record.CHECKPOINT
        if self.job.rebuild:
            self.check_rebuild_source()
        if self.main:
            run_folder.take_up(folder)
        if ckpt.exists():
            try:
                self.state, rows, self.rng = load_checkpoint(ckpt, self.distiller, self.optimizer, device)
            except Exception as exc:  # truncated, garbled, refused by weights_only, or not our layout
                why = reason(exc)
                if self.job.rebuild:
                    raise StoreError(f"run {rid}: {self.job.rebuild}, and last.pt cannot rebuild it ({why}); "
                                     f"delete {str(folder)!r} to train the run again") from None
                if self.main:
                    run_folder.set_aside(ckpt)
                log.warning("run %s: last.pt is unreadable (%s): kept as last.pt%s, training restarts from epoch 0",
                            rid, why, record.CORRUPT_SUFFIX)
                return False
            self.rows = rows if rows is not None else [r for r in read_metrics(metrics) if r["epoch"] <= self.state.epoch]
            if self.main:
                write_metrics(metrics, self.rows)
            log.info("resuming run %s from epoch %d/%d", rid, self.state.epoch, epochs)
        elif self.main and metrics.exists():
            metrics.unlink()  # rows of a launch that died before its first checkpoint
        if self.job.rebuild:
            self.settle_rebuild()
        stop = self.rc.stop_after_epoch
        if stop is not None and stop <= self.state.epoch < epochs:  # relaunched with the same stop: stop at once
            self.stopped = True
            log.info("run %s is already past stop_after_epoch=%d (epoch %d): not training", rid, stop, self.state.epoch)
        self.curves = open_curves(self.rc.logger, folder, self.rows, self.job.semantic, main=self.main, run_id=rid,
                                  name=f"{self.label} s{self.rc.seed}", epochs=epochs, store=self.rc.store,
                                  uri=self.rc.logger_uri, project=self.rc.logger_project)
        return True

    def settle_rebuild(self) -> None:
        """After last.pt is read for a damaged finished run: an unfinished one (a damaged result.json, last.pt
        short of the end) resumes; otherwise last.pt must be at the final epoch (and at the best one for best.pt),
        and the damaged files are set aside for their rebuilt copies."""
        folder, rid, epochs = self.job.folder, self.job.rid, self.rc.train.total_epochs
        if self.job.rebuild.startswith(record.RESULT) and self.state.epoch < epochs:
            # a result.json that is damaged and a last.pt short of the end: the run never finished, so it resumes
            if self.main:
                run_folder.set_aside(folder / record.RESULT)
            log.warning("run %s: %s, and last.pt holds epoch %d of %d: the run is unfinished; resuming it (the "
                        "damaged file is kept as %s%s)", rid, self.job.rebuild, self.state.epoch, epochs,
                        record.RESULT, record.CORRUPT_SUFFIX)
            self.job.rebuild, self.rebuilding = None, {}
            return
        if self.state.epoch < epochs:
            raise StoreError(f"run {rid}: {self.job.rebuild}, and last.pt cannot rebuild it (it holds epoch "
                             f"{self.state.epoch} of {epochs}); delete {str(folder)!r} to train the run again")
        if record.BEST in self.rebuilding and self.state.best_epoch != epochs:
            raise StoreError(f"run {rid}: {self.job.rebuild}, and last.pt cannot rebuild best.pt (it holds the "
                             f"last epoch, {epochs}; the best was epoch {self.state.best_epoch}); its numbers "
                             f"stand, but delete {str(folder)!r} to train the run again for its best weights")
        # the damaged files are kept beside their rebuilt copies (metrics.jsonl was rewritten from last.pt above)
        damaged = [record.RESULT] if self.job.rebuild.startswith(record.RESULT) else list(self.rebuilding)
        kept = [name for name in damaged if name != record.METRICS and (folder / name).exists()]
        if self.main:
            for name in kept:
                run_folder.set_aside(folder / name)
        log.warning("run %s: %s: rebuilding its record from last.pt (all %d epochs done)%s", rid,
                    self.job.rebuild, epochs, f"; the damaged file{'s are' if len(kept) > 1 else ' is'} kept as "
                    f"{', '.join(name + record.CORRUPT_SUFFIX for name in kept)}" if kept else "")

    def check_rebuild_source(self) -> None:
        """Before a damaged finished run is rebuilt: last.pt exists and, where the record has its SHA-256, matches
        it; notes which files are rebuilt (`rebuilding`) and what they should hash to."""
        folder, rid, ckpt = self.job.folder, self.job.rid, self.job.folder / record.CHECKPOINT
        if not ckpt.exists():
            raise StoreError(f"run {rid}: {self.job.rebuild}, and there is no last.pt to rebuild it from; "
                             f"delete {str(folder)!r} to train the run again")
        old, _ = record.read_result(folder)  # None when result.json itself is the damaged file
        hashes = (old or {}).get("sha256") or {}
        if hashes.get(record.CHECKPOINT) and file_sha256(ckpt) != hashes[record.CHECKPOINT]:
            raise StoreError(f"run {rid}: {self.job.rebuild}, and last.pt does not match its SHA-256 either, so "
                             f"nothing can rebuild it; delete {str(folder)!r} to train the run again")
        self.rebuilding = {name: hashes.get(name, "") for name in (record.damaged_files(folder, old) if old else {})}

    def report_rebuilt(self, hashes: dict[str, str] | None) -> None:
        """Say, per rebuilt file, whether it came back byte for byte (its SHA-256 is the one recorded)."""
        for name, want in self.rebuilding.items():
            if want and hashes is not None:
                same = hashes.get(name) == want
                log.warning("run %s: %s rebuilt from last.pt: %s", self.job.rid, name,
                            "byte for byte the file it recorded" if same else "its SHA-256 differs from the one "
                            "recorded (the same weights, written differently)")

    def step(self, batch: Batch, epoch: int, progress: float, stream: Stream,
             global_batch: int | None, teacher_out: TeacherOut | None, meter: EpochMeter) -> None:
        """One optimisation step on the shared batch (per-step warm-up, DDP shard weighting)."""
        t = self.rc.train
        if epoch <= t.warmup_epochs:
            set_lr(self.optimizer, self.lr(epoch, progress))
        scale = 1.0
        if global_batch is not None:  # a shard: DDP averages over ranks, so weight it by its share of the batch
            self.distiller.global_batch_size = global_batch
            scale = batch.y.numel() * stream.env.world_size / global_batch
        with own_rng(self):
            logits, losses, loss = train_step(self.forward_train, self.optimizer, batch, epoch, stream.amp, scale,
                                              teacher_out)
        meter.add(logits, losses, loss, batch.y, self.distiller.global_batch_size)

    def save_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.main:
            append_metrics(self.job.folder / record.METRICS, row)
            save_checkpoint(self.job.folder / record.CHECKPOINT, self.distiller, self.optimizer, self.state, row["lr"],
                            self.rows, self.rng if self.rng is not None else rng_state())
            self.curves.log(row)


__all__ = ["EpochMeter", "Job", "Member"]
