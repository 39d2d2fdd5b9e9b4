"""The runner: one run = one folder in the store, trained epoch by epoch, resumable at any epoch.

Layout of a run folder: config.json (semantic + full config), metrics.jsonl (one row per epoch),
last.pt (everything needed to resume), model.pt (final student weights) and, written last,
result.json — its presence is what "finished" means.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from oracle_kd import distributed, records
from oracle_kd.checkpoints import load_weights, read_state_dict
from oracle_kd.config import RunConfig, StudentConfig, TrainConfig, load_train_preset
from oracle_kd.data import BatchLoader, DataBundle, FolderLoader, build_loader, load_dataset
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller, method_entry
from oracle_kd.models import build_model
from oracle_kd.models.fold import fold_batchnorm

log = logging.getLogger("oracle_kd")


# ----------------------------------------------------------------------------- hardware
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("hardware.device=cuda but no CUDA device is visible; use hardware=cpu or hardware.device=auto")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the networks when asked; losses cast their inputs to fp32 themselves."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def apply_hardware(rc: RunConfig, device_name: str | None = None) -> torch.device:
    """Threads and cuDNN settings; the device (`device_name` overrides hardware.device: a DDP rank's GPU)."""
    hw = rc.hardware
    device = resolve_device(device_name or hw.device)
    if hw.threads:
        torch.set_num_threads(hw.threads)
    torch.backends.cudnn.benchmark = hw.cudnn_benchmark
    return device


def prepare_model(model: nn.Module, device: torch.device, rc: RunConfig) -> nn.Module:
    model = model.to(device)
    if rc.hardware.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if rc.hardware.compile:
        model.compile()
    return model


def prepare_teacher(model: nn.Module, device: torch.device, rc: RunConfig) -> nn.Module:
    """A frozen teacher for the step: eval mode, BN folded into its convs (`hardware.fold_teacher_bn`),
    then the same device/layout/compile treatment as the student."""
    model.eval()
    if rc.hardware.fold_teacher_bn:
        fold_batchnorm(model)
    return prepare_model(model, device, rc)


# ----------------------------------------------------------------------------- identity
def needs_teacher(rc: RunConfig) -> bool:
    return method_entry(rc.method.name)[0].needs_teacher


def teacher_run_config(rc: RunConfig) -> RunConfig:
    """The `ce` run that makes an auto teacher: same dataset, seed and hardware, the teacher's arch."""
    from oracle_kd.methods.ce import CEConfig

    train = rc.train if rc.teacher.train == "same" else load_train_preset(rc.teacher.train)
    return dataclasses.replace(rc, student=StudentConfig(arch=rc.teacher.arch, stem=rc.teacher.stem), method=CEConfig(), train=train,
                               stop_after_epoch=None)


def identify(rc: RunConfig) -> tuple[dict[str, Any], str, Path]:
    """(semantic config, run_id, run folder). An auto teacher is identified by its own run_id; a
    checkpoint file by its content hash, so moving the file does not change the run."""
    teacher_identity: dict[str, Any] | None = None
    if needs_teacher(rc):
        if rc.teacher.checkpoint == "auto":
            _, trid, _ = identify(teacher_run_config(rc))
            teacher_identity = {"arch": rc.teacher.arch, "source": "auto", "run_id": trid}  # run_id covers stem
        else:
            path = Path(rc.teacher.checkpoint)
            if not path.is_file():
                raise ConfigError(f"teacher.checkpoint={rc.teacher.checkpoint!r}: no such file "
                                  f"({path.resolve()}); give a checkpoint path or teacher.checkpoint=auto")
            teacher_identity = {"arch": rc.teacher.arch, "source": "file", "sha256": records.file_sha256(path)}
            if rc.teacher.stem != "auto":
                teacher_identity["stem"] = rc.teacher.stem
    semantic = records.semantic_config(rc, teacher_identity)
    rid = records.run_id(semantic)
    return semantic, rid, records.run_dir(rc.store, rc, rid)


# ----------------------------------------------------------------------------- teacher
def load_teacher(rc: RunConfig, data: DataBundle, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Build the teacher and load its weights: from the store (training it first if missing) or a file."""
    if rc.teacher.checkpoint == "auto":
        trc = teacher_run_config(rc)
        _, trid, tdir = identify(trc)
        if not (tdir / records.RESULT).exists():
            log.info("teacher %s on %s (seed %d) is not in the store: training it first (run %s)",
                     rc.teacher.arch, rc.dataset.name, rc.seed, trid)
        tresult = run(trc)
        path, source = tdir / records.MODEL, f"run {trid}"
    else:
        path, source, tresult = Path(rc.teacher.checkpoint), rc.teacher.checkpoint, None
    teacher = build_model(rc.teacher.arch, data.num_classes, data.in_channels, image_size=data.image_size,
                          stem=rc.teacher.stem)
    load_weights(teacher, read_state_dict(path), source=source, arch=rc.teacher.arch)
    info = {"arch": rc.teacher.arch, "source": source,
            "train_best_top1": tresult["best_top1"] if tresult else None}
    return prepare_teacher(teacher, device, rc), info


# ----------------------------------------------------------------------------- loops
@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader | FolderLoader, amp: contextlib.AbstractContextManager | None = None,
             env: distributed.DistEnv = distributed.DistEnv()) -> dict[str, float]:
    """Top-1, top-5 (top-k with k = min(5, classes)) in % and mean CE on a test loader; under DDP each
    rank evaluates its share of the split and the counts are summed."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    c1 = torch.zeros((), device=device)
    c5 = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    for x, y in loader.epoch(0):
        with amp or contextlib.nullcontext():
            logits, _ = model(x)
        logits = logits.float()
        loss += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        c1 += (top[:, 0] == y).sum()
        c5 += (top == y[:, None]).any(dim=1).sum()
        n += y.numel()
    model.train(was_training)
    c1, c5, loss, n = distributed.all_reduce_sum(torch.stack([c1, c5, loss, n]), env).tolist()
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n}


def train_step(forward_train: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
               optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, epoch: int,
               amp: contextlib.AbstractContextManager, loss_scale: float = 1.0,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step, exactly as the runner takes it (the benchmark times this very function).

    Returns (student logits, loss terms, total loss), all still on the device: nothing here waits for
    the device. `loss_scale` multiplies the loss before backward (DDP uses it for uneven shards)."""
    with amp:
        logits, losses = forward_train(x, y, epoch)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    optimizer.step()
    return logits, losses, loss


def lr_at(t: TrainConfig, epoch: int, progress: float = 1.0) -> float:
    """The learning rate at `progress` ∈ (0, 1] through (1-based) `epoch`: a linear per-step warm-up over
    the first `warmup_epochs`, then ×lr_decay after each milestone (MultiStepLR's convention: milestone m
    lowers the rate from epoch m+1 on). A pure function of the position in training, so resuming needs no
    scheduler state beyond the epoch number."""
    if epoch <= t.warmup_epochs:
        return t.lr * (epoch - 1 + progress) / t.warmup_epochs
    return t.lr * t.lr_decay ** sum(1 for m in t.milestones if m < epoch)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def status(rc: RunConfig) -> dict[str, Any]:
    """Where a run stands without touching it: finished, resumable (with its last epoch) or new."""
    _, rid, folder = identify(rc)
    state = "new"
    if (folder / records.RESULT).exists():
        state = "finished"
    elif (folder / records.METRICS).exists():
        done = [r["epoch"] for r in records.read_metrics(folder / records.METRICS)]
        state = f"resumable after epoch {max(done)}" if done else "new"
    return {"run_id": rid, "status": state, "folder": str(folder)}


def plan(rc: RunConfig) -> dict[str, Any]:
    """task=plan: print what a launch would do (a dry run, e.g. over a whole sweep) and train nothing."""
    st = status(rc)
    teacher = ""
    if needs_teacher(rc):
        if rc.teacher.checkpoint == "auto":
            tst = status(teacher_run_config(rc))
            teacher = f" [teacher {rc.teacher.arch} run {tst['run_id']}: {tst['status']}]"
        else:
            teacher = f" [teacher {rc.teacher.arch} from {rc.teacher.checkpoint}]"
    print(f"plan: {st['status']:<24} {st['run_id']} {rc.dataset.name} {rc.method.name} "
          f"{rc.teacher.arch if needs_teacher(rc) else 'none'}->{rc.student.arch} seed={rc.seed}{teacher}", flush=True)
    return st


def run(rc: RunConfig) -> dict[str, Any]:
    """Run (or skip, or resume) one training run and return its result record.

    A finished run returns its stored result without training; an unfinished one resumes from last.pt.
    With stop_after_epoch the launch ends early and returns {"status": "stopped", ...}.
    """
    env, device_name = distributed.setup(rc.hardware.ddp, rc.hardware.device)
    semantic, rid, folder = identify(rc)
    lock = (records.run_lock(folder, on_wait=lambda: log.info("run %s is being trained by another process: waiting", rid))
            if env.is_main else contextlib.nullcontext())  # DDP: rank 0 holds the lock for all ranks
    with lock:
        distributed.barrier(env)  # every rank now sees the folder as rank 0 found it
        if (folder / records.RESULT).exists():
            result = records.read_json(folder / records.RESULT)
            log.info("run %s (%s %s) is already finished: best top-1 %.2f, last %.2f — not training again",
                     rid, rc.method.name, rc.student.arch, result["best_top1"], result["last_top1"])
            return result
        result = _train(rc, semantic, rid, folder, env, device_name)
        distributed.barrier(env)  # rank 0 has written the record before anyone moves on
        return result


def _train(rc: RunConfig, semantic: dict[str, Any], rid: str, folder: Path, env: distributed.DistEnv,
           device_name: str) -> dict[str, Any]:
    """The training loop. Under DDP every rank runs it on its shard of each global batch; only rank 0
    (`main`) writes to the run folder."""
    main = env.is_main
    device = apply_hardware(rc, device_name)
    amp = autocast(device, rc.hardware.precision)
    data = load_dataset(rc.dataset.name, rc.dataset.root, test_fraction=rc.dataset.test_fraction)
    teacher, teacher_info = load_teacher(rc, data, device) if needs_teacher(rc) else (None, None)

    seed_everything(rc.seed)
    student = prepare_model(build_model(rc.student.arch, data.num_classes, data.in_channels,
                                        image_size=data.image_size, stem=rc.student.stem), device, rc)
    input_shape = (data.in_channels, data.image_size, data.image_size)
    distiller = build_distiller(rc.method, student, teacher, input_shape).to(device)
    forward_train = distributed.wrap_for_training(distiller, env, device, sync_bn=rc.hardware.sync_bn)
    t = rc.train
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=t.lr, momentum=t.momentum,
                                weight_decay=t.weight_decay, nesterov=t.nesterov)
    loader_kw = dict(seed=rc.seed, device=device, channels_last=rc.hardware.channels_last, workers=rc.dataset.workers,
                     shard=env.shard)
    train_loader = build_loader(data, "train", batch_size=t.batch_size, pad=rc.dataset.crop_pad, flip=rc.dataset.flip,
                                drop_last=t.drop_last, **loader_kw)
    test_loader = build_loader(data, "test", batch_size=t.eval_batch_size, **loader_kw)

    full_config = dataclasses.asdict(rc)
    if main:
        records.atomic_write_json(folder / records.CONFIG, {"run_id": rid, "semantic": semantic, "config": full_config})
    if teacher is not None:
        teacher_info["test"] = evaluate(teacher, test_loader, amp, env)

    state: dict[str, Any] = {"epoch": 0, "best_top1": -1.0, "best_top5": 0.0, "best_epoch": 0,
                             "wall_time_s": 0.0, "train_time_s": 0.0, "train_images": 0}
    ckpt_path = folder / records.CHECKPOINT
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        distiller.load_trainable_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        if main:
            rows = [r for r in records.read_metrics(folder / records.METRICS) if r["epoch"] <= state["epoch"]]
            records.write_metrics(folder / records.METRICS, rows)
        log.info("resuming run %s from epoch %d/%d", rid, state["epoch"], t.epochs)
    elif main and (folder / records.METRICS).exists():
        (folder / records.METRICS).unlink()  # rows of a launch that died before its first checkpoint

    teacher_name = rc.teacher.arch if teacher is not None else "none"
    log.info("run %s: %s %s->%s on %s, seed %d, %d epochs, %s%s -> %s", rid, rc.method.name, teacher_name,
             rc.student.arch, rc.dataset.name, rc.seed, t.epochs, device,
             f" x {env.world_size} ranks (DDP)" if env.active else "", folder)
    steps = len(train_loader)
    bar = tqdm(total=t.epochs * steps, initial=state["epoch"] * steps, disable=not (rc.progress and main), mininterval=1.0,
               desc=f"{rc.method.name} {teacher_name}->{rc.student.arch} s{rc.seed}", unit="step", dynamic_ncols=True)
    launch_start = time.perf_counter()
    last_eval: dict[str, float] = {}
    for epoch in range(state["epoch"] + 1, t.epochs + 1):
        epoch_start = time.perf_counter()
        lr = lr_at(t, epoch)
        warming = epoch <= t.warmup_epochs
        for group in optimizer.param_groups:
            group["lr"] = lr
        distiller.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=device)
        seen = 0
        for step, (x, y) in enumerate(train_loader.epoch(epoch)):
            if warming:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(t, epoch, (step + 1) / steps)
            b, scale = y.numel(), 1.0
            if env.active:  # a shard: DDP averages over ranks, so weight it by its share of the global batch
                distiller.global_batch_size = train_loader.global_batch_size(step)
                scale = b * env.world_size / distiller.global_batch_size
            logits, losses, loss = train_step(forward_train, optimizer, x, y, epoch, amp, scale)
            with torch.no_grad():  # accumulate on the device: no per-step host synchronisation
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0) + v.detach().float() * b
                sums["loss"] = sums.get("loss", 0) + loss.detach().float() * b
                correct += (logits.argmax(dim=1) == y).sum()
            seen += distiller.global_batch_size or b
            bar.update(1)
        names = list(sums)
        totals = distributed.all_reduce_sum(torch.stack([*(sums[k] for k in names), correct.float()]), env).tolist()
        train_metrics = {f"train_{k}": v / seen for k, v in zip(names, totals)}
        train_metrics["train_top1"] = 100.0 * totals[-1] / seen
        train_time = time.perf_counter() - epoch_start
        last_eval = evaluate(distiller.student, test_loader, amp, env)
        state["train_time_s"] += train_time
        state["train_images"] += seen
        if last_eval["top1"] > state["best_top1"]:
            state.update(best_top1=last_eval["top1"], best_top5=last_eval["top5"], best_epoch=epoch)
        state["epoch"] = epoch
        state["wall_time_s"] += time.perf_counter() - epoch_start
        row = {"epoch": epoch, "lr": lr, **train_metrics, "test_top1": last_eval["top1"],
               "test_top5": last_eval["top5"], "test_loss": last_eval["loss"], "epoch_time_s": train_time}
        if main:
            records.append_metrics(folder / records.METRICS, row)
            records.atomic_torch_save(ckpt_path, {"model": distiller.trainable_state_dict(), "optimizer": optimizer.state_dict(),
                                                  "schedule": {"epoch": epoch, "lr": lr}, "rng": _rng_state(), "state": state})
        bar.set_postfix(loss=f"{train_metrics['train_loss']:.3f}", test=f"{last_eval['top1']:.2f}",
                        best=f"{state['best_top1']:.2f}", refresh=False)
        if rc.stop_after_epoch is not None and epoch >= rc.stop_after_epoch and epoch < t.epochs:
            bar.close()
            log.info("run %s stopped after epoch %d as asked (stop_after_epoch); relaunch to resume", rid, epoch)
            return {"run_id": rid, "status": "stopped", "epoch": epoch, "folder": str(folder)}
    bar.close()

    if not last_eval:  # a relaunch that found every epoch done but no result (died while finishing)
        last_eval = evaluate(distiller.student, test_loader, amp, env)
    if main:
        records.atomic_torch_save(folder / records.MODEL, distiller.student.state_dict())
    result = {
        "run_id": rid, "status": "finished", "folder": str(folder),
        "dataset": rc.dataset.name, "method": rc.method.name, "student": rc.student.arch,
        "teacher": teacher_info["arch"] if teacher_info else None, "seed": rc.seed,
        "best_top1": state["best_top1"], "best_top5": state["best_top5"], "best_epoch": state["best_epoch"],
        "last_top1": last_eval["top1"], "last_top5": last_eval["top5"], "last_test_loss": last_eval["loss"],
        "epochs": t.epochs, "wall_time_s": state["wall_time_s"], "extra_params": distiller.extra_parameter_count(),
        "train_images_per_s": state["train_images"] / max(state["train_time_s"], 1e-9),
        "teacher_info": teacher_info, "semantic": semantic, "config": full_config,
        "device": str(device), "world_size": env.world_size,
        "sync_bn": rc.hardware.sync_bn if env.active else None, "torch_version": torch.__version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if main:
        records.atomic_write_json(folder / records.RESULT, result)
    log.info("run %s finished: best top-1 %.2f (epoch %d), last %.2f, %.0f images/s, %.0f s in this launch",
             rid, result["best_top1"], result["best_epoch"], result["last_top1"], result["train_images_per_s"],
             time.perf_counter() - launch_start)
    return result
