"""Sweep throughput: aggregate training images/s of k runs sharing one device (`bench.concurrent`).

A CIFAR ResNet step leaves most of a large GPU idle (kernels too small to fill it, launch latency), so a
sweep may finish sooner with several runs per GPU (Hydra's joblib launcher, `n_jobs=k`). This measures
that directly: k processes, each with this runner's step and data path for one pair and method, warm up,
meet at a barrier, then train for the same number of steps; the aggregate rate is all their images over
the common wall-clock window (first start to last end). On a CPU the cores are split between the k runs,
as `hardware.threads` should be in a joblib sweep.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import torch

from oracle_kd.config import RunConfig
from oracle_kd.engine.hardware import apply_hardware
from oracle_kd.tasks.bench.measure import sync_device
from oracle_kd.tasks.bench.parts import bench_data, method_config, our_batches, our_step


def _cpu_threads(k: int, device_type: str) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // k) if device_type == "cpu" else max(1, min(4, cores // k))


def _worker(rc: RunConfig, pair: tuple[str, str], method: str, threads: int, barrier: Any, out: Any) -> None:
    """One of the k runs (in its own process): warm up, wait for the others, time the steps, report."""
    try:
        rc = dataclasses.replace(rc, hardware=dataclasses.replace(rc.hardware, threads=threads))
        device = apply_hardware(rc.hardware)
        b = rc.bench
        bundle, _ = bench_data(rc)
        step = our_step(rc, method_config(rc, method, pair[0]), pair[0], pair[1], bundle.num_classes, device)
        batches = our_batches(bundle, rc, device)
        for _ in range(b.warmup):
            step(*next(batches))
        sync_device(device)
        barrier.wait()
        start = time.time()
        for _ in range(b.repeats * b.steps):
            step(*next(batches))
        sync_device(device)
        out.put(("ok", start, time.time(), b.repeats * b.steps * b.batch_size))
    except BaseException as exc:  # report, and free the others from the barrier
        barrier.abort()
        out.put(("error", f"{type(exc).__name__}: {exc}", 0.0, 0))


def concurrent_throughput(rc: RunConfig, pair: tuple[str, str], method: str, k: int,
                          timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run k copies of one (pair, method) step loop at once; return per-run and aggregate images/s."""
    device_type = "cuda" if rc.hardware.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
    threads = rc.hardware.threads or _cpu_threads(k, device_type)
    ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn also gives each run a clean process
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rc, pair, method, threads, barrier, out), daemon=True)
             for _ in range(k)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=timeout_s) for _ in range(k)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [r[1] for r in results if r[0] != "ok"]
    if errors:
        raise RuntimeError(f"bench.concurrent: a run failed: {errors[0]}")
    starts, ends, images = [r[1] for r in results], [r[2] for r in results], [r[3] for r in results]
    per_run = [n / (e - s) for s, e, n in zip(starts, ends, images)]
    return {"k": k, "threads_per_run": threads, "per_run_img_s": statistics.median(per_run),
            "aggregate_img_s": sum(images) / (max(ends) - min(starts))}


def concurrency_rows(rc: RunConfig, pair: tuple[str, str], method: str, ks: list[int]) -> list[dict[str, Any]]:
    """One row per k, with the speed-up of the aggregate over k = the first entry (normally 1)."""
    rows = [concurrent_throughput(rc, pair, method, k) for k in ks]
    base = rows[0]["aggregate_img_s"]
    for r in rows:
        r.update(pair=f"{pair[0]}-{pair[1]}", method=method, speedup=r["aggregate_img_s"] / base)
    return rows
