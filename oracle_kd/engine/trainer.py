"""The Trainer: one run = one folder in the store, trained epoch by epoch, resumable at any epoch.

What a run owns (`Member`: student, method extras, optimizer, schedule, train state, metrics, record) is
kept apart from what runs with the same data, seed, batch size and teacher could share (`Stream`: the
device, the dataset and its batch stream, the frozen teacher). A solo run is one Member on one Stream;
under DDP every rank runs the same Trainer on its shard of each global batch and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from oracle_kd.config import RunConfig
from oracle_kd.data import BatchLoader, DataBundle, FolderLoader, build_loader, load_dataset
from oracle_kd.engine import distributed
from oracle_kd.engine.hardware import apply_hardware, autocast, prepare_model
from oracle_kd.engine.state import TrainState, load_checkpoint, save_checkpoint, seed_everything
from oracle_kd.engine.step import ForwardTrain, evaluate, lr_at, make_optimizer, set_lr, train_step
from oracle_kd.engine.teacher import build_teacher, identify, needs_teacher, teacher_run_config
from oracle_kd.methods import Distiller, build_distiller
from oracle_kd.models import build_model
from oracle_kd.store import record
from oracle_kd.store.io import (
    append_metrics,
    atomic_torch_save,
    atomic_write_json,
    read_json,
    read_metrics,
    run_lock,
    write_metrics,
)
from oracle_kd.store.record import RunResult

log = logging.getLogger("oracle_kd")
Loader = BatchLoader | FolderLoader


# ----------------------------------------------------------------------------- what runs could share
def obtain_teacher(rc: RunConfig, data: DataBundle, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher, loaded from the store (training it first if missing) or from a checkpoint file."""
    tresult = None
    if rc.teacher.checkpoint == "auto":
        trc = teacher_run_config(rc)
        _, trid, tdir = identify(trc)
        if not (tdir / record.RESULT).exists():
            log.info("teacher %s on %s (seed %d) is not in the store: training it first (run %s)",
                     rc.teacher.arch, rc.dataset.name, rc.seed, trid)
        tresult = run(trc)
        path, source = tdir / record.MODEL, f"run {trid}"
    else:
        path, source = Path(rc.teacher.checkpoint), rc.teacher.checkpoint
    teacher = build_teacher(rc, data, device, path, source)
    info = {"arch": rc.teacher.arch, "source": source,
            "train_best_top1": tresult["best_top1"] if tresult else None}
    return teacher, info


@dataclass
class Stream:
    """The device, the data and its batches, and the frozen teacher: everything a run reads but does not own."""

    env: distributed.DistEnv
    device: torch.device
    amp: contextlib.AbstractContextManager
    data: DataBundle
    teacher: nn.Module | None = None
    teacher_info: dict[str, Any] | None = None
    train_loader: Loader | None = None
    test_loader: Loader | None = None

    @classmethod
    def open(cls, rc: RunConfig, env: distributed.DistEnv, device_name: str) -> "Stream":
        device = apply_hardware(rc.hardware, device_name)
        data = load_dataset(rc.dataset.name, rc.dataset.root, test_fraction=rc.dataset.test_fraction)
        stream = cls(env, device, autocast(device, rc.hardware.precision), data)
        if needs_teacher(rc):
            stream.teacher, stream.teacher_info = obtain_teacher(rc, data, device)
        return stream

    def open_loaders(self, rc: RunConfig) -> None:
        """The batch stream: a pure function of (seed, epoch), sharded per DDP rank."""
        kw = dict(seed=rc.seed, device=self.device, channels_last=rc.hardware.channels_last,
                  workers=rc.dataset.workers, shard=self.env.shard)
        t = rc.train
        self.train_loader = build_loader(self.data, "train", batch_size=t.batch_size, pad=rc.dataset.crop_pad,
                                         flip=rc.dataset.flip, drop_last=t.drop_last, **kw)
        self.test_loader = build_loader(self.data, "test", batch_size=t.eval_batch_size, **kw)

    def evaluate_teacher(self) -> None:
        if self.teacher is not None and self.teacher_info is not None:
            self.teacher_info["test"] = evaluate(self.teacher, self.test_loader, self.amp, self.env)


# ----------------------------------------------------------------------------- what a run owns
class EpochMeter:
    """Per-epoch sums of the loss terms and correct predictions, kept on the device (no per-step sync)."""

    def __init__(self, device: torch.device) -> None:
        self.sums: dict[str, Any] = {}
        self.correct = torch.zeros((), device=device)
        self.seen = 0

    @torch.no_grad()
    def add(self, logits: torch.Tensor, losses: dict[str, torch.Tensor], loss: torch.Tensor, y: torch.Tensor,
            global_batch: int | None) -> None:
        b = y.numel()
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float() * b
        self.sums["loss"] = self.sums.get("loss", 0) + loss.detach().float() * b
        self.correct += (logits.argmax(dim=1) == y).sum()
        self.seen += global_batch or b

    def totals(self, env: distributed.DistEnv) -> dict[str, float]:
        names = list(self.sums)
        totals = distributed.all_reduce_sum(torch.stack([*(self.sums[k] for k in names), self.correct.float()]),
                                            env).tolist()
        out = {f"train_{k}": v / self.seen for k, v in zip(names, totals)}
        out["train_top1"] = 100.0 * totals[-1] / self.seen
        return out


@dataclass
class Member:
    """One run's own part: its folder and record, student + method extras, optimizer, schedule and state."""

    rc: RunConfig
    semantic: dict[str, Any]
    rid: str
    folder: Path
    main: bool
    distiller: Distiller
    forward_train: ForwardTrain
    optimizer: torch.optim.Optimizer
    state: TrainState = field(default_factory=TrainState)
    last_eval: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, rc: RunConfig, semantic: dict[str, Any], rid: str, folder: Path, stream: Stream) -> "Member":
        """Seed, then build the student and the method (a shape probe may draw from the RNG) on the device."""
        seed_everything(rc.seed)
        data, device = stream.data, stream.device
        student = prepare_model(build_model(rc.student.arch, data.num_classes, data.in_channels,
                                            image_size=data.image_size, stem=rc.student.stem), device, rc.hardware)
        input_shape = (data.in_channels, data.image_size, data.image_size)
        distiller = build_distiller(rc.method, student, stream.teacher, input_shape).to(device)
        forward_train = distributed.wrap_for_training(distiller, stream.env, device, sync_bn=rc.hardware.sync_bn)
        optimizer = make_optimizer(distiller.trainable_parameters(), rc.train)
        return cls(rc, semantic, rid, folder, stream.env.is_main, distiller, forward_train, optimizer)

    @property
    def label(self) -> str:
        teacher = self.rc.teacher.arch if self.distiller.teacher is not None else "none"
        return f"{self.rc.method.name} {teacher}->{self.rc.student.arch}"

    def write_config(self) -> None:
        if self.main:
            atomic_write_json(self.folder / record.CONFIG, {"run_id": self.rid, "semantic": self.semantic,
                                                            "config": self.rc.as_dict()})

    def resume(self, device: torch.device) -> None:
        """Continue from last.pt (metrics rows beyond it are dropped), or start clean."""
        metrics, ckpt = self.folder / record.METRICS, self.folder / record.CHECKPOINT
        if ckpt.exists():
            self.state = load_checkpoint(ckpt, self.distiller, self.optimizer, device)
            if self.main:
                write_metrics(metrics, [r for r in read_metrics(metrics) if r["epoch"] <= self.state.epoch])
            log.info("resuming run %s from epoch %d/%d", self.rid, self.state.epoch, self.rc.train.epochs)
        elif self.main and metrics.exists():
            metrics.unlink()  # rows of a launch that died before its first checkpoint

    def save_epoch(self, row: dict[str, Any]) -> None:
        if self.main:
            append_metrics(self.folder / record.METRICS, row)
            save_checkpoint(self.folder / record.CHECKPOINT, self.distiller, self.optimizer, self.state, row["lr"])


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Phases: setup → resume → (epoch → evaluate)* → finish; `fit` runs them."""

    def __init__(self, rc: RunConfig, semantic: dict[str, Any], rid: str, folder: Path, env: distributed.DistEnv,
                 device_name: str) -> None:
        self.rc, self.semantic, self.rid, self.folder = rc, semantic, rid, folder
        self.env, self.device_name = env, device_name

    def setup(self) -> None:
        """Open the stream (training an auto teacher first if needed), build the run, then the loaders."""
        self.stream = Stream.open(self.rc, self.env, self.device_name)
        self.member = Member.build(self.rc, self.semantic, self.rid, self.folder, self.stream)
        self.stream.open_loaders(self.rc)
        self.member.write_config()
        self.stream.evaluate_teacher()

    def resume(self) -> None:
        self.member.resume(self.stream.device)

    def epoch(self, epoch: int, bar: Any) -> EpochMeter:
        """One epoch of steps at the schedule's rate (with a per-step warm-up); returns its meter."""
        m, s, t = self.member, self.stream, self.rc.train
        loader = s.train_loader
        steps = len(loader)
        warming = epoch <= t.warmup_epochs
        set_lr(m.optimizer, lr_at(t, epoch))
        m.distiller.train()
        meter = EpochMeter(s.device)
        for step, (x, y) in enumerate(loader.epoch(epoch)):
            if warming:
                set_lr(m.optimizer, lr_at(t, epoch, (step + 1) / steps))
            scale = 1.0
            if s.env.active:  # a shard: DDP averages over ranks, so weight it by its share of the global batch
                m.distiller.global_batch_size = loader.global_batch_size(step)
                scale = y.numel() * s.env.world_size / m.distiller.global_batch_size
            logits, losses, loss = train_step(m.forward_train, m.optimizer, x, y, epoch, s.amp, scale)
            meter.add(logits, losses, loss, y, m.distiller.global_batch_size)
            bar.update(1)
        return meter

    def evaluate(self, epoch: int, meter: EpochMeter, epoch_start: float) -> dict[str, Any]:
        """Test the student, update the state, write the metrics row and last.pt; returns the row."""
        m, s = self.member, self.stream
        train_metrics = meter.totals(s.env)
        train_time = time.perf_counter() - epoch_start
        m.last_eval = evaluate(m.distiller.student, s.test_loader, s.amp, s.env)
        m.state.train_time_s += train_time
        m.state.train_images += meter.seen
        m.state.record_eval(epoch, m.last_eval["top1"], m.last_eval["top5"])
        m.state.epoch = epoch
        m.state.wall_time_s += time.perf_counter() - epoch_start
        row = {"epoch": epoch, "lr": lr_at(self.rc.train, epoch), **train_metrics, "test_top1": m.last_eval["top1"],
               "test_top5": m.last_eval["top5"], "test_loss": m.last_eval["loss"], "epoch_time_s": train_time}
        m.save_epoch(row)
        return row

    def finish(self, launch_start: float) -> dict[str, Any]:
        """model.pt, then result.json (written last: its presence means finished)."""
        m, s, rc = self.member, self.stream, self.rc
        if not m.last_eval:  # a relaunch that found every epoch done but no result (died while finishing)
            m.last_eval = evaluate(m.distiller.student, s.test_loader, s.amp, s.env)
        if m.main:
            atomic_torch_save(self.folder / record.MODEL, m.distiller.student.state_dict())
        st = m.state
        result = RunResult(
            run_id=self.rid, status="finished", folder=str(self.folder), dataset=rc.dataset.name,
            method=rc.method.name, student=rc.student.arch, teacher=s.teacher_info["arch"] if s.teacher_info else None,
            seed=rc.seed, best_top1=st.best_top1, best_top5=st.best_top5, best_epoch=st.best_epoch,
            last_top1=m.last_eval["top1"], last_top5=m.last_eval["top5"], last_test_loss=m.last_eval["loss"],
            epochs=rc.train.epochs, wall_time_s=st.wall_time_s, extra_params=m.distiller.extra_parameter_count(),
            train_images_per_s=st.train_images / max(st.train_time_s, 1e-9), teacher_info=s.teacher_info,
            semantic=self.semantic, config=rc.as_dict(), device=str(s.device), world_size=self.env.world_size,
            sync_bn=rc.hardware.sync_bn if self.env.active else None, torch_version=torch.__version__,
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds")).to_json()
        if m.main:
            atomic_write_json(self.folder / record.RESULT, result)
        log.info("run %s finished: best top-1 %.2f (epoch %d), last %.2f, %.0f images/s, %.0f s in this launch",
                 self.rid, result["best_top1"], result["best_epoch"], result["last_top1"],
                 result["train_images_per_s"], time.perf_counter() - launch_start)
        return result

    def fit(self) -> dict[str, Any]:
        """All phases; with `stop_after_epoch` the launch ends early and returns {"status": "stopped", ...}."""
        self.setup()
        self.resume()
        rc, m, t = self.rc, self.member, self.rc.train
        log.info("run %s: %s on %s, seed %d, %d epochs, %s%s -> %s", self.rid, m.label, rc.dataset.name, rc.seed,
                 t.epochs, self.stream.device, f" x {self.env.world_size} ranks (DDP)" if self.env.active else "",
                 self.folder)
        steps = len(self.stream.train_loader)
        bar = tqdm(total=t.epochs * steps, initial=m.state.epoch * steps, disable=not (rc.progress and m.main),
                   mininterval=1.0, desc=f"{m.label} s{rc.seed}", unit="step", dynamic_ncols=True)
        launch_start = time.perf_counter()
        for epoch in range(m.state.epoch + 1, t.epochs + 1):
            epoch_start = time.perf_counter()
            row = self.evaluate(epoch, self.epoch(epoch, bar), epoch_start)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", test=f"{row['test_top1']:.2f}",
                            best=f"{m.state.best_top1:.2f}", refresh=False)
            if rc.stop_after_epoch is not None and rc.stop_after_epoch <= epoch < t.epochs:
                bar.close()
                log.info("run %s stopped after epoch %d as asked (stop_after_epoch); relaunch to resume", self.rid, epoch)
                return {"run_id": self.rid, "status": "stopped", "epoch": epoch, "folder": str(self.folder)}
        bar.close()
        return self.finish(launch_start)


def run(rc: RunConfig) -> dict[str, Any]:
    """Run (or skip, or resume) one training run and return its result record.

    A finished run returns its stored result without training; an unfinished one resumes from last.pt.
    Under DDP rank 0 holds the run's lock for all ranks and alone writes the folder."""
    env, device_name = distributed.setup(rc.hardware.ddp, rc.hardware.device)
    semantic, rid, folder = identify(rc)
    lock = (run_lock(folder, on_wait=lambda: log.info("run %s is being trained by another process: waiting", rid))
            if env.is_main else contextlib.nullcontext())
    with lock:
        distributed.barrier(env)  # every rank now sees the folder as rank 0 found it
        if (folder / record.RESULT).exists():
            result = read_json(folder / record.RESULT)
            log.info("run %s (%s %s) is already finished: best top-1 %.2f, last %.2f — not training again",
                     rid, rc.method.name, rc.student.arch, result["best_top1"], result["last_top1"])
            return result
        result = Trainer(rc, semantic, rid, folder, env, device_name).fit()
        distributed.barrier(env)  # rank 0 has written the record before anyone moves on
        return result


def run_status(rc: RunConfig) -> dict[str, Any]:
    """Where a run stands without touching it: finished, resumable (with its last epoch) or new."""
    _, rid, folder = identify(rc)
    state = "new"
    if (folder / record.RESULT).exists():
        state = "finished"
    elif (folder / record.METRICS).exists():
        done = [r["epoch"] for r in read_metrics(folder / record.METRICS)]
        state = f"resumable after epoch {max(done)}" if done else "new"
    return {"run_id": rid, "status": state, "folder": str(folder)}


__all__ = ["Member", "Stream", "Trainer", "obtain_teacher", "run", "run_status"]
