"""task=bench: training images/s of the reference loop against this runner's step.

For every teacher-student pair x method, on one batch size and one device, in this one process:

(a) **the reference loop** (`reference`), as the released Oracle code and mdistiller write it: per-image
    torchvision transforms behind a `DataLoader` with `bench.workers` worker processes, fp32; for Oracle KD,
    Step A by `loss.backward()` on a teacher whose parameters require grad, as the released code does.
(b) **this runner** (`parts`): the device-resident uint8 data with batched augmentation (`build_loader`)
    and the runner's own `train_step`, with the `hardware.*` switches (`apply_hardware`, `prepare_model`,
    `autocast`).

Each part is built and warmed up alone (`bench.warmup` untimed steps; the DataLoader's persistent workers
start then), which is when its peak memory is taken. Then `bench.repeats` timed blocks of `bench.steps`
steps each, data loading included, alternate between the parts in ABBA order (a, b, b, a, ...), so a shared
machine that changes speed mid-run slows both alike; each block starts with one untimed step (and the
reference first drops the batches its workers made ahead while (b) ran). images/s = batch·steps / block
time; the median block is reported, and every block is kept in the CSV (`measure`). Beside it: the peak
memory of the part, and its distance from a FLOP floor — the step's FLOPs (counted with
`torch.utils.flop_counter`'s formulas: convolutions and matmuls, forward and backward, only the gradients
actually computed) divided by the device's measured dense rate (the better of a large matmul and a large
3x3 convolution, in the step's precision; `flops`). One CSV row per (pair, method) goes to
`<results_dir>/bench/bench_<device>_<timestamp>.csv` (`report`); `bench.concurrent` adds the aggregate rate
of k simultaneous runs (`concurrency`).

`bench.cohorts` (preset names) replaces all of the above by another comparison: the aggregate student
images/s of runs trained together as a cohort against the same runs trained one after another (`cohort`),
one row per preset in `<out_dir>/cohort_<device>_<timestamp>.csv`.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from oracle_kd.config import RunConfig
from oracle_kd.data import DataBundle
from oracle_kd.engine.hardware import apply_hardware
from oracle_kd.methods import MethodConfig, available_methods
from oracle_kd.tasks.bench.cohort import cohort_bench
from oracle_kd.tasks.bench.concurrency import concurrency_rows
from oracle_kd.tasks.bench.config import BENCH_DATASETS, BENCH_MIN_REPEATS, BenchConfig, parse_pair
from oracle_kd.tasks.bench.flops import dense_rates, flop_columns
from oracle_kd.tasks.bench.measure import Part, PeakMemory, measure
from oracle_kd.tasks.bench.parts import IMAGE_SIZE, bench_data, method_config, our_batches, our_step
from oracle_kd.tasks.bench.reference import reference_batches, reference_loader, reference_step
from oracle_kd.tasks.bench.report import (
    CONCURRENT_COLUMNS,
    bench_out_dir,
    device_name,
    fmt_or_blank,
    print_bench_table,
    print_concurrent_table,
    rounded,
    slug,
    write_csv,
)
from oracle_kd.tasks.registry import register_task

__all__ = ["BENCH_DATASETS", "BENCH_MIN_REPEATS", "BenchConfig", "bench", "parse_pair"]

log = logging.getLogger("oracle_kd")


@dataclass
class _Session:
    """What every (pair, method) row of one bench run shares."""

    rc: RunConfig
    device: torch.device
    bundle: DataBundle
    common: dict[str, Any]
    rates: dict[torch.dtype, float]  # the dense rate per precision (empty with bench.flops=false)
    bar: Any


def _probe_rates(device: torch.device, precision: str) -> tuple[dict[torch.dtype, float], str]:
    """The dense rate of each precision a step runs in, and every probe's result for the CSV."""
    dtypes = [torch.float32] + ([torch.bfloat16] if precision == "bf16" else [])
    measured = {dt: dense_rates(device, dt) for dt in dtypes}
    probes = "; ".join(f"{str(dt).removeprefix('torch.')} " + " ".join(f"{k} {v / 1e12:.4f}" for k, v in r.items())
                       for dt, r in measured.items())
    log.info("bench: dense rate (TFLOP/s) %s", probes)
    return {dt: max(r.values()) for dt, r in measured.items()}, probes


def _common_columns(rc: RunConfig, device: torch.device, name: str, threads: int, bundle: DataBundle,
                    data_kind: str, started: datetime, probes: str) -> dict[str, Any]:
    """The columns every row of this run shares: when, on what, with which software and settings."""
    import torchvision  # lazy: slow to import, and only its version is needed here

    b, hw = rc.bench, rc.hardware
    return {
        "timestamp": started.isoformat(timespec="seconds"), "device": device.type, "device_name": name,
        "threads": threads, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(terse=True), "data": data_kind,
        "dataset": bundle.name.removeprefix("synthetic-"), "image_shape": f"3x{IMAGE_SIZE}x{IMAGE_SIZE}",
        "num_classes": bundle.num_classes, "batch_size": b.batch_size, "steps": b.steps, "repeats": b.repeats,
        "warmup": b.warmup, "ref_workers": b.workers, "precision": hw.precision,
        "channels_last": hw.channels_last, "compile": hw.compile, "cudnn_benchmark": hw.cudnn_benchmark,
        "fold_teacher_bn": hw.fold_teacher_bn,
        "rate_probes": probes or None,
    }


def _reference_part(s: _Session, cfg: MethodConfig, teacher_arch: str, student_arch: str) -> Part:
    """Part (a): the reference step behind its DataLoader, draining what the workers prefetch."""
    b, device = s.rc.bench, s.device
    loader = reference_loader(s.bundle, batch_size=b.batch_size, workers=b.workers, device=device, seed=s.rc.seed)
    return Part(reference_step(s.rc, cfg, teacher_arch, student_arch, s.bundle.num_classes, device),
                reference_batches(loader, device), batch_size=b.batch_size, device=device,
                drain=b.workers * (loader.prefetch_factor or 0), cudnn_benchmark=True)


def _time_parts(s: _Session, cfg: MethodConfig, teacher_arch: str, student_arch: str,
                label: str) -> tuple[list[float] | None, list[float], PeakMemory, PeakMemory]:
    """Build and warm each part alone (its peak memory), then time both ABBA-interleaved; the parts (and
    the DataLoader's workers) are gone when this returns."""
    b, device, bar = s.rc.bench, s.device, s.bar
    ref, ref_mem = None, PeakMemory(device)
    if b.reference:  # built and warmed first, alone, so that its peak memory is its own
        bar.set_description(f"{label} reference warm-up")
        with ref_mem:
            ref = _reference_part(s, cfg, teacher_arch, student_arch)
            ref.warm(b.warmup)
        bar.update(b.warmup)
    bar.set_description(f"{label} ours warm-up")
    with PeakMemory(device) as ours_mem:
        ours = Part(our_step(s.rc, cfg, teacher_arch, student_arch, s.bundle.num_classes, device),
                    our_batches(s.bundle, s.rc, device), batch_size=b.batch_size, device=device)
        ours.warm(b.warmup)
    bar.update(b.warmup)
    bar.set_description(f"{label} timing")
    try:
        ref_rates, ours_rates = measure(ref, ours, repeats=b.repeats, steps=b.steps, bar=bar)
    finally:
        for part in (ref, ours):
            if part is not None:
                part.close()
    return ref_rates, ours_rates, ref_mem, ours_mem


def _bench_row(s: _Session, teacher_arch: str, student_arch: str, method: str) -> dict[str, Any]:
    """Measure one (pair, method): the CSV row of its rates, peak memory and FLOP floors."""
    rc, b = s.rc, s.rc.bench
    cfg = method_config(rc, method, teacher_arch)
    pair = f"{teacher_arch}-{student_arch}"
    row: dict[str, Any] = {**s.common, "pair": pair, "teacher": teacher_arch, "student": student_arch,
                           "method": method}
    ref_rates, ours_rates, ref_mem, ours_mem = _time_parts(s, cfg, teacher_arch, student_arch, f"{method} {pair}")
    ref_img_s = statistics.median(ref_rates) if ref_rates else None
    ours_img_s = statistics.median(ours_rates)
    row.update(ref_img_s=rounded(ref_img_s), ours_img_s=rounded(ours_img_s),
               ratio=rounded(ours_img_s / ref_img_s, 3) if ref_img_s else None,
               ref_img_s_repeats=";".join(f"{v:.1f}" for v in ref_rates) if ref_rates else None,
               ours_img_s_repeats=";".join(f"{v:.1f}" for v in ours_rates),
               peak_mem_kind=ours_mem.kind, ref_peak_mem_mib=rounded(ref_mem.mib),
               ours_peak_mem_mib=rounded(ours_mem.mib))
    if b.flops:
        # counted on uncompiled copies: a compiled step would hide its operations from the FLOP counter
        count_rc = dataclasses.replace(rc, hardware=dataclasses.replace(rc.hardware, compile=False))
        ours_dtype = torch.bfloat16 if rc.hardware.precision == "bf16" else torch.float32
        row.update(flop_columns(count_rc, cfg, teacher_arch, student_arch, s.bundle.num_classes, s.device, s.rates,
                                ours_dtype, ref_img_s, ours_img_s, reference=b.reference))
    log.info("bench %s %s: reference %s img/s, ours %.1f img/s%s", method, pair,
             fmt_or_blank(ref_img_s, ".1f") or "-", ours_img_s,
             f" ({ours_img_s / ref_img_s:.2f}x)" if ref_img_s else "")
    return row


@register_task("bench", "training images/s: the reference loop vs this runner's step, with FLOP floors",
               section="bench", config=BenchConfig)
def bench(rc: RunConfig) -> dict[str, Any]:
    """task=bench: time (a) and (b) for every pair x method, print the table, write the CSV; with
    bench.cohorts, only the cohort-vs-solo comparison of those presets."""
    b = rc.bench
    if b.cohorts:
        return cohort_bench(rc)
    device = apply_hardware(rc.hardware)
    bundle, data_kind = bench_data(rc)
    methods = list(b.methods) or available_methods()
    pairs = [parse_pair(p) for p in b.pairs]
    started = datetime.now(timezone.utc)
    name, threads = device_name(device), torch.get_num_threads()
    log.info("bench: %d pair(s) x %d method(s), batch %d, %s x %d steps after %d warm-up, on %s (%s, %d threads), "
             "%s %s data", len(pairs), len(methods), b.batch_size, b.repeats, b.steps, b.warmup, device, name,
             threads, data_kind, bundle.name)
    rates, probes = _probe_rates(device, rc.hardware.precision) if b.flops else ({}, "")
    per_part = b.warmup + b.repeats * (b.steps + 1)
    bar = tqdm(total=len(pairs) * len(methods) * per_part * (2 if b.reference else 1), disable=not rc.progress,
               desc="bench", unit="step", mininterval=1.0, dynamic_ncols=True)
    common = _common_columns(rc, device, name, threads, bundle, data_kind, started, probes)
    s = _Session(rc, device, bundle, common, rates, bar)
    try:
        rows = [_bench_row(s, t, st, m) for t, st in pairs for m in methods]
    finally:
        bar.close()

    out_dir = bench_out_dir(rc)
    path = out_dir / f"bench_{slug(name)}_{started.strftime('%Y%m%d-%H%M%S')}.csv"
    write_csv(rows, path)
    print_bench_table(rc, rows, common, device, path)
    out: dict[str, Any] = {"csv": str(path), "rows": rows}
    if b.concurrent:
        out["concurrent"] = concurrent_table(rc, pairs[0], methods[0], common, out_dir, started)
    return out


def concurrent_table(rc: RunConfig, pair: tuple[str, str], method: str, common: dict[str, Any], out_dir: Path,
                     started: datetime) -> dict[str, Any]:
    """bench.concurrent: aggregate images/s of k simultaneous runs of this runner's step (see concurrency)."""
    log.info("bench: %s %s-%s as k = %s concurrent runs", method, *pair, rc.bench.concurrent)
    rows = [{**common, **r} for r in concurrency_rows(rc, pair, method, list(rc.bench.concurrent))]
    path = out_dir / f"concurrent_{slug(common['device_name'])}_{started.strftime('%Y%m%d-%H%M%S')}.csv"
    write_csv(rows, path, CONCURRENT_COLUMNS)
    print_concurrent_table(rc, rows, pair, method, common["device"], path)
    return {"csv": str(path), "rows": rows}
