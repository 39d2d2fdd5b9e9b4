"""The Trainer: one run = one folder in the store, trained epoch by epoch, resumable at any epoch.

What a run owns (`Member`: student, method extras, optimizer, schedule, train state, metrics, record) is
kept apart from what runs with the same data, seed, batch size and teacher could share (`Stream`: the
device, the dataset and its batch stream, the frozen teacher). A solo run is one Member on one Stream;
under DDP every rank runs the same Trainer on its shard of each global batch and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from oracle_kd.config import RunConfig
from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.precision import at_least_fp32
from oracle_kd.core.teacher_view import PLAIN, TeacherInput, TeacherOut, teacher_outputs
from oracle_kd.data import BatchLoader, DataBundle, FolderLoader, ImageSet, build_loader, load_dataset, train_subset
from oracle_kd.engine import distributed
from oracle_kd.engine.cohort import check_cohort
from oracle_kd.engine.curves import Curves, open_curves
from oracle_kd.engine.hardware import apply_hardware, autocast, in_run_dtype, param_dtype, prepare_model
from oracle_kd.engine.state import TrainState, load_checkpoint, save_checkpoint, seed_everything
from oracle_kd.engine.step import ForwardTrain, evaluate, lr_at, make_optimizer, set_lr, train_step
from oracle_kd.engine.superfeatures import chimeric_set, obtain_superfeatures
from oracle_kd.engine.teacher import (
    build_run_model,
    build_teacher,
    identify,
    needs_superfeatures,
    needs_teacher,
    superfeature_source_config,
    teacher_run_config,
)
from oracle_kd.errors import ConfigError, OracleKDError, StoreError, TrainingError, from_scheduler, reason
from oracle_kd.methods import Distiller, build_distiller, method_entry
from oracle_kd.store import record
from oracle_kd.store.io import (
    append_metrics,
    atomic_torch_save,
    atomic_write_json,
    read_metrics,
    remove_stale_temps,
    run_lock,
    write_metrics,
)
from oracle_kd.store.record import RunResult

log = logging.getLogger("oracle_kd")
Loader = BatchLoader | FolderLoader


# ----------------------------------------------------------------------------- what runs could share
def obtain_teacher(rc: RunConfig, data: DataBundle, device: torch.device,
                   superfeatures: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher, loaded from the store (training it first if missing) or from a checkpoint file."""
    tresult = None
    if rc.teacher.checkpoint == "auto":
        trc = teacher_run_config(rc)
        _, trid, tdir = identify(trc)
        tresult = run(trc, announce=f"teacher {rc.teacher.arch} on {rc.dataset.name} (seed {rc.seed}) is not in "
                                    f"the store: training it first (run {trid})")
        path, source = tdir / record.MODEL, f"run {trid}"
    else:
        path, source = Path(rc.teacher.checkpoint), rc.teacher.checkpoint
    teacher = build_teacher(rc, data, device, path, source, superfeatures)
    info = {"arch": rc.teacher.arch, "source": source,
            "train_best_top1": tresult["best_top1"] if tresult else None}
    return teacher, info


@dataclass
class Stream:
    """The device, the data and its batches, and the frozen teacher: what every run of a cohort reads
    but none owns. Teacher outputs are computed here, once per batch for all runs that ask the same."""

    env: distributed.DistEnv
    device: torch.device
    amp: contextlib.AbstractContextManager
    data: DataBundle
    teacher: nn.Module | None = None
    teacher_info: dict[str, Any] | None = None
    train_loader: Loader | None = None
    loader_kw: dict[str, Any] = field(default_factory=dict)
    test_loaders: dict[int, Loader] = field(default_factory=dict)
    superfeatures: dict[str, Any] | None = None  # input superfeatures (partition, log prior) of sfx MLP runs
    chimeric_loader: Loader | None = None  # the chimeric phase's samples, labelled by the teacher per batch

    @classmethod
    def open(cls, rc: RunConfig, env: distributed.DistEnv, device_name: str) -> "Stream":
        device = apply_hardware(rc.hardware, device_name)
        full = load_dataset(rc.dataset.name, rc.dataset.root, test_fraction=rc.dataset.test_fraction,
                            download=rc.dataset.download)
        data = train_subset(full, rc.dataset.train_size, rc.seed)
        stream = cls(env, device, autocast(device, rc.hardware.precision), data)
        if needs_superfeatures(rc):  # from the ordinary teacher, trained first if missing, on the whole split
            src = superfeature_source_config(rc)
            run(src, announce=f"the ordinary teacher {src.student.arch}, which defines the input superfeatures, is "
                              f"not in the store: training it first (run {identify(src)[1]})")
            stream.superfeatures = obtain_superfeatures(rc, full, device)
        if needs_teacher(rc):
            stream.teacher, stream.teacher_info = obtain_teacher(rc, data, device, stream.superfeatures)
        return stream

    def open_loaders(self, rc: RunConfig) -> None:
        """The batch stream: a pure function of (seed, epoch), sharded per DDP rank."""
        self.loader_kw = dict(seed=rc.seed, device=self.device, channels_last=rc.hardware.channels_last,
                              workers=rc.dataset.workers, shard=self.env.shard,
                              dtype=param_dtype(rc.hardware.precision))
        t = rc.train
        self.train_loader = build_loader(self.data, "train", batch_size=t.batch_size, pad=rc.dataset.crop_pad,
                                         flip=rc.dataset.flip, drop_last=t.drop_last, **self.loader_kw)
        if t.chimeric_epochs > 0:
            if not isinstance(self.data.train, ImageSet) or self.superfeatures is None:
                raise ConfigError(f"train.chimeric_epochs needs a dataset held in memory (digits, CIFAR), "
                                  f"not {rc.dataset.name}")
            chimeric = chimeric_set(self.data.train, self.superfeatures["partition"], t.chimeric_size, rc.seed)
            self.chimeric_loader = build_loader(dataclasses.replace(self.data, train=chimeric), "train",
                                                batch_size=t.batch_size, drop_last=t.drop_last, **self.loader_kw)

    def data_info(self) -> DataInfo:
        """What a method may size itself by (every split keeps its labels in memory, folder sets too)."""
        d = self.data
        return DataInfo((d.in_channels, d.image_size, d.image_size), d.num_classes, d.train.labels)

    def loader(self, chimeric: bool) -> Loader:
        loader = self.chimeric_loader if chimeric else self.train_loader
        assert loader is not None, "open_loaders first"
        return loader

    def test_loader(self, batch_size: int) -> Loader:
        """The in-order test split at a run's eval batch size (one loader per distinct size)."""
        if batch_size not in self.test_loaders:
            self.test_loaders[batch_size] = build_loader(self.data, "test", batch_size=batch_size, **self.loader_kw)
        return self.test_loaders[batch_size]

    def teacher_report(self, eval_batch_size: int) -> dict[str, Any] | None:
        """The teacher's record for a run: where it came from and its test accuracy (at the run's eval batch)."""
        if self.teacher is None or self.teacher_info is None:
            return None
        key = f"test@{eval_batch_size}"
        if key not in self.teacher_info:
            self.teacher_info[key] = evaluate(self.teacher, self.test_loader(eval_batch_size), self.amp, self.env)
        info = {k: v for k, v in self.teacher_info.items() if not k.startswith("test@")}
        return {**info, "test": self.teacher_info[key]}

    def teacher_outputs(self, inputs: list[TeacherInput], x: torch.Tensor, y: torch.Tensor,
                        mean_over: int | None) -> dict[TeacherInput, TeacherOut]:
        if not inputs or self.teacher is None:
            return {}
        with self.amp:
            return teacher_outputs(self.teacher, inputs, x, y, mean_over=mean_over)


# ----------------------------------------------------------------------------- what a run owns
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
    curves: Curves = field(default_factory=Curves)  # logger=tensorboard: <folder>/tb/, opened by resume

    @classmethod
    def build(cls, job: Job, stream: Stream) -> "Member":
        """Seed, then build the student and the method (a shape probe may draw from the RNG) on the device."""
        rc = job.rc
        seed_everything(rc.seed)
        data, device = stream.data, stream.device
        student = prepare_model(build_run_model(rc.student.arch, rc.student.stem, data, stream.superfeatures), device,
                                rc.hardware)
        teacher = stream.teacher if needs_teacher(rc) else None
        # the method's own modules (regressors, connectors) in the run's dtype too
        distiller = in_run_dtype(build_distiller(rc.method, student, teacher, data=stream.data_info()).to(device),
                                 rc.hardware.precision)
        forward_train = distributed.wrap_for_training(distiller, stream.env, device, sync_bn=rc.hardware.sync_bn)
        optimizer = make_optimizer(distiller.trainable_parameters(), rc.train)
        return cls(job, stream.env.is_main, distiller, forward_train, optimizer)

    @property
    def rc(self) -> RunConfig:
        return self.job.rc

    @property
    def label(self) -> str:
        teacher = self.rc.teacher.arch if self.distiller.teacher is not None else "none"
        return f"{self.rc.method.name} {teacher}->{self.rc.student.arch}"

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
        if self.job.rebuild and not ckpt.exists():
            raise StoreError(f"run {rid}: {self.job.rebuild}, and there is no last.pt to rebuild it from; "
                             f"delete {str(folder)!r} to train the run again")
        if self.main:
            remove_stale_temps(folder)
            (folder / record.FAILURE).unlink(missing_ok=True)
        if ckpt.exists():
            try:
                self.state, rows = load_checkpoint(ckpt, self.distiller, self.optimizer, device)
            except Exception as exc:  # truncated, garbled, refused by weights_only, or not our layout
                why = reason(exc)
                if self.job.rebuild:
                    raise StoreError(f"run {rid}: {self.job.rebuild}, and last.pt cannot rebuild it ({why}); "
                                     f"delete {str(folder)!r} to train the run again") from None
                if self.main:
                    os.replace(ckpt, ckpt.with_name(ckpt.name + record.CORRUPT_SUFFIX))
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
            if self.state.epoch < epochs:
                raise StoreError(f"run {rid}: {self.job.rebuild}, and last.pt cannot rebuild it (it holds epoch "
                                 f"{self.state.epoch} of {epochs}); delete {str(folder)!r} to train the run again")
            result = folder / record.RESULT
            if self.main and self.job.rebuild.startswith(record.RESULT) and result.exists():
                os.replace(result, result.with_name(record.RESULT + record.CORRUPT_SUFFIX))
            log.warning("run %s: %s: rebuilding its record from last.pt (all %d epochs done)%s", rid,
                        self.job.rebuild, epochs, f"; the damaged file is kept as {record.RESULT}{record.CORRUPT_SUFFIX}"
                        if self.job.rebuild.startswith(record.RESULT) else "")
        stop = self.rc.stop_after_epoch
        if stop is not None and stop <= self.state.epoch < epochs:  # relaunched with the same stop: stop at once
            self.stopped = True
            log.info("run %s is already past stop_after_epoch=%d (epoch %d): not training", rid, stop, self.state.epoch)
        self.curves = open_curves(self.rc.logger, folder, self.rows, self.job.semantic, main=self.main)
        return True

    def step(self, batch: Batch, epoch: int, progress: float, stream: Stream,
             global_batch: int | None, teacher_out: TeacherOut | None, meter: EpochMeter) -> None:
        """One optimisation step on the shared batch (per-step warm-up, DDP shard weighting)."""
        t = self.rc.train
        if epoch <= t.warmup_epochs:
            set_lr(self.optimizer, lr_at(t, epoch, progress))
        scale = 1.0
        if global_batch is not None:  # a shard: DDP averages over ranks, so weight it by its share of the batch
            self.distiller.global_batch_size = global_batch
            scale = batch.y.numel() * stream.env.world_size / global_batch
        logits, losses, loss = train_step(self.forward_train, self.optimizer, batch, epoch, stream.amp, scale,
                                          teacher_out)
        meter.add(logits, losses, loss, batch.y, self.distiller.global_batch_size)

    def save_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.main:
            append_metrics(self.job.folder / record.METRICS, row)
            save_checkpoint(self.job.folder / record.CHECKPOINT, self.distiller, self.optimizer, self.state, row["lr"],
                            self.rows)
            self.curves.log(row)


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

    def epoch(self, epoch: int, group: list[Member], bar: Any,
              chimeric: bool = False) -> tuple[list[EpochMeter], list[float]]:
        """One epoch of shared batches for `group`; returns each member's meter and its share of the time. In
        the chimeric phase the batches are chimeric samples, labelled by the teacher's prediction on them."""
        s = self.stream
        loader = s.loader(chimeric)
        steps = len(loader)
        for m in group:
            set_lr(m.optimizer, lr_at(m.rc.train, epoch))
            m.distiller.train()
        meters = [EpochMeter(s.device) for _ in group]
        own = [0.0] * len(group)
        wanted = [m.distiller.teacher_input() for m in group]  # once per epoch, not per step
        inputs = [i for i in wanted if i is not None]
        start = time.perf_counter()
        for step, batch in enumerate(loader.epoch(epoch)):
            global_batch = loader.global_batch_size(step) if s.env.active else None
            outs = s.teacher_outputs(inputs, batch.x, batch.y, global_batch)
            if chimeric:  # every member's teacher sees the plain input (checked when it was built)
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
        row = {"epoch": epoch, "lr": lr_at(m.rc.train, epoch), **train_metrics, "test_top1": m.last_eval["top1"],
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
                write_failure(m.job, m.failed)
            return {"run_id": m.job.rid, "status": "failed" if m.failed else "stopped", "epoch": m.state.epoch,
                    "folder": str(m.job.folder), **({"error": m.failed} if m.failed else {})}
        rc, s, st = m.rc, self.stream, m.state
        if not m.last_eval:  # a relaunch that found every epoch done but no result (died while finishing)
            m.last_eval = evaluate(m.distiller.student, s.test_loader(rc.train.eval_batch_size), s.amp, self.env)
        if m.main:
            atomic_torch_save(m.job.folder / record.MODEL, m.distiller.student.state_dict())
        model_bytes = (m.job.folder / record.MODEL).stat().st_size if m.main else None
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
        ).to_json()
        if m.main:
            atomic_write_json(m.job.folder / record.RESULT, result)
        log.info("run %s finished: best top-1 %.2f (epoch %d), last %.2f, %.0f images/s", m.job.rid,
                 result["best_top1"], result["best_epoch"], result["last_top1"], result["train_images_per_s"])
        return result

    def _bar(self) -> Any:
        rc, n = self.jobs[0].rc, len(self.members)
        desc = f"{self.members[0].label} s{rc.seed}" if n == 1 else f"cohort of {n} on {rc.dataset.name} s{rc.seed}"

        def steps(m: Member, upto: int) -> int:  # steps in epochs 1..upto (the chimeric phase has its own loader)
            main = min(upto, m.rc.train.epochs)
            return main * len(self.stream.loader(False)) + (upto - main) * len(self.stream.loader(upto > main))

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
            chimeric = epoch > group[0].rc.train.epochs  # one phase at a time: its members share one loader
            group = [m for m in group if (epoch > m.rc.train.epochs) == chimeric]
            start = time.perf_counter()
            meters, shares = self.epoch(epoch, group, bar, chimeric)
            cohort_time = time.perf_counter() - start
            for m, meter, share in zip(group, meters, shares):
                row = self.evaluate(m, epoch, meter, cohort_time * share, cohort_time)
                if row is not None and len(group) == 1:
                    bar.set_postfix(loss=f"{row['train_loss']:.3f}", test=f"{row['test_top1']:.2f}",
                                    best=f"{m.state.best_top1:.2f}", refresh=False)
        bar.close()
        return [self.finish(m) for m in self.members]


def check_ddp(rc: RunConfig) -> None:
    """Refuse, in one line, a run whose method or optimizer has no DDP form (started by torchrun without
    hardware.ddp, so `validate` could not tell)."""
    if rc.train.optimizer == "dot":
        raise ConfigError("train.optimizer=dot takes two backward passes per step; it is not supported under DDP")
    if not method_entry(rc.method.name)[0].supports_ddp:
        raise ConfigError(f"method {rc.method.name} keeps per-run state over the whole training split; it is not "
                          f"supported under DDP")


def write_failure(job: Job, error: str) -> None:
    """failure.json: the run stopped on an error (the tables list it as failed, not unfinished). Best effort:
    the store may be the thing that failed."""
    try:
        atomic_write_json(job.folder / record.FAILURE, {"run_id": job.rid, "error": error,
                                                        "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    except OSError:
        pass


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
    if len(jobs) > 1:  # missing auto teachers first, each once (a member may be one: it is then finished)
        teachers = {Job.of(trc).rid: trc for trc in (teacher_run_config(j.rc) for j in jobs
                                                       if needs_teacher(j.rc) and j.rc.teacher.checkpoint == "auto")}
        for trc in teachers.values():
            run(trc)
    results: dict[str, dict[str, Any]] = {}
    if not env.active:  # finished runs need no lock (result.json is written last, atomically): a read-only store works
        results.update((j.rid, r) for j in jobs if (r := _stored(j)) is not None)
    pending = [j for j in jobs if j.rid not in results]
    with contextlib.ExitStack() as locks:
        for job in sorted(pending, key=lambda j: j.rid):
            if env.is_main:
                locks.enter_context(run_lock(job.folder, on_wait=lambda rid=job.rid: log.info(
                    "run %s is being trained by another process: waiting", rid)))
        distributed.barrier(env)  # every rank now sees the folders as rank 0 found them
        results.update((j.rid, r) for j in pending if (r := _stored(j)) is not None)
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
                            write_failure(job, " ".join(line.split()))
                raise
        distributed.barrier(env)  # rank 0 has written the records before anyone moves on
    return [results[j.rid] for j in ordered]


def _stored(job: Job) -> dict[str, Any] | None:
    """The stored record of a finished run (logged), or None. A record or model.pt that is damaged marks the
    job for rebuilding from last.pt (`job.rebuild`) instead of training."""
    result, problem = record.read_result(job.folder)
    if result is not None:
        problem = record.model_problem(job.folder, result)
        if problem is None:
            log.info("run %s (%s %s) is already finished: best top-1 %.2f, last %.2f — not training again",
                     job.rid, job.rc.method.name, job.rc.student.arch, result["best_top1"], result["last_top1"])
            return result
    elif problem is not None:
        problem = f"{record.RESULT} {problem}"
    job.rebuild = problem
    return None


def run_status(rc: RunConfig) -> dict[str, Any]:
    """Where a run stands without touching it: finished, resumable (with its last epoch) or new."""
    _, rid, folder = identify(rc)
    result, problem = record.read_result(folder)
    if result is not None:
        problem = record.model_problem(folder, result)
        state = "finished" if problem is None else f"finished, but {problem}: a launch rebuilds it from last.pt"
    elif problem is not None:
        state = f"damaged: {record.RESULT} {problem}: a launch rebuilds it from last.pt"
    elif (folder / record.FAILURE).exists():
        state = "failed: a launch retries it from its last checkpoint"
    elif (folder / record.CHECKPOINT).exists():
        done = [r["epoch"] for r in read_metrics(folder / record.METRICS)]
        state = f"resumable after epoch {max(done)}" if done else "resumable"
    else:
        state = "new"
    return {"run_id": rid, "status": state, "folder": str(folder)}


__all__ = ["Job", "Member", "Stream", "Trainer", "obtain_teacher", "run", "run_cohort", "run_status"]
