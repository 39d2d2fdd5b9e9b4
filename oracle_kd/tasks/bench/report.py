"""What a bench run leaves behind: the printed tables and the CSV files, one row per measurement, with the
machine and software it ran on so that rows from different machines can be compared later."""

from __future__ import annotations

import contextlib
import csv
import io
import platform
import re
from pathlib import Path
from typing import Any

import torch

from oracle_kd.config import RunConfig
from oracle_kd.store.io import atomic_write_bytes

COLUMNS = [
    "timestamp", "device", "device_name", "threads", "torch", "torchvision", "python", "platform",
    "data", "dataset", "image_shape", "num_classes", "pair", "teacher", "student", "method",
    "batch_size", "steps", "repeats", "warmup", "ref_workers",
    "precision", "channels_last", "compile", "cudnn_benchmark", "fold_teacher_bn",
    "ref_img_s", "ours_img_s", "ratio", "ref_img_s_repeats", "ours_img_s_repeats",
    "peak_mem_kind", "ref_peak_mem_mib", "ours_peak_mem_mib",
    "ref_step_gflop", "ours_step_gflop", "ref_rate_tflops", "ours_rate_tflops", "rate_probes",
    "ref_floor_img_s", "ours_floor_img_s", "ref_pct_of_floor", "ours_pct_of_floor",
]
CONCURRENT_COLUMNS = ["timestamp", "device", "device_name", "torch", "python", "data", "dataset", "pair", "method",
                      "batch_size", "steps", "repeats", "precision", "channels_last", "compile", "k",
                      "threads_per_run", "per_run_img_s", "aggregate_img_s", "speedup"]
COHORT_COLUMNS = [
    "timestamp", "device", "device_name", "threads", "torch", "python", "platform",
    "preset", "data", "dataset", "image_shape", "num_classes", "teacher", "members", "member_list", "teacher_inputs",
    "batch_size", "steps", "repeats", "warmup",
    "precision", "channels_last", "compile", "cudnn_benchmark", "fold_teacher_bn",
    "solo_img_s", "cohort_img_s", "ratio", "flop_ratio", "solo_img_s_repeats", "cohort_img_s_repeats", "ratio_repeats",
    "solo_step_gflop", "cohort_step_gflop",
    "peak_mem_kind", "largest_member", "solo_largest_peak_mem_mib", "cohort_peak_mem_mib", "mem_ratio",
]


def device_name(device: torch.device) -> str:
    """The GPU's or CPU's model name: a rate means little without the hardware it was measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def slug(text: str) -> str:
    """`text` as a file-name part (lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def fmt_or_blank(v: float | None, spec: str = ".0f") -> str:
    """`v` formatted, or "" for a value that was not measured."""
    return "" if v is None else format(v, spec)


def rounded(v: float | None, digits: int = 1) -> float | None:
    """`v` rounded for the CSV, None kept (an empty cell)."""
    return None if v is None else round(float(v), digits)


def bench_out_dir(rc: RunConfig) -> Path:
    """Where every CSV of a bench run goes: bench.out_dir, or <results_dir>/bench."""
    return Path(rc.bench.out_dir) if rc.bench.out_dir else Path(rc.results_dir) / "bench"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The printed table: one line per row, blank cells where a part or the FLOP count was skipped."""
    f = fmt_or_blank
    head = ["method", "pair", "batch", "ref img/s", "ours img/s", "ratio", "ref MiB", "ours MiB",
            "ref floor", "ours floor", "ref %floor", "ours %floor"]
    body = [[r["method"], r["pair"], str(r["batch_size"]), f(r.get("ref_img_s")), f(r.get("ours_img_s")),
             f(r.get("ratio"), ".2f"), f(r.get("ref_peak_mem_mib")), f(r.get("ours_peak_mem_mib")),
             f(r.get("ref_floor_img_s")), f(r.get("ours_floor_img_s")), f(r.get("ref_pct_of_floor"), ".1f"),
             f(r.get("ours_pct_of_floor"), ".1f")] for r in rows]
    return render(head, body, left=2)


def render(head: list[str], body: list[list[str]], left: int) -> str:
    """Aligned text columns: the first `left` left-aligned (names), the rest right-aligned (numbers)."""
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def print_conditions(what: str, rc: RunConfig, common: dict[str, Any], device: torch.device, data: str = "") -> None:
    """The first line of a bench report: device, threads, torch, batch, repeats and the hardware switches."""
    b, hw = rc.bench, rc.hardware
    print(f"{what} on {common['device_name']} ({device}, {common['threads']} threads; torch {torch.__version__}), "
          f"{data}batch {b.batch_size}, median of {b.repeats} x {b.steps} steps; "
          f"hardware: {hw.precision}, channels_last={hw.channels_last}, compile={hw.compile}")


def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> None:
    """Write the rows atomically, so that an interrupted run never leaves a truncated CSV."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode())


def print_bench_table(rc: RunConfig, rows: list[dict[str, Any]], common: dict[str, Any], device: torch.device,
                      path: Path) -> None:
    """The conditions of the run, what each column means, the table, and where the CSV went."""
    b = rc.bench
    print_conditions("bench", rc, common, device, f"{common['data']} {common['dataset']} data, ")
    print("ref = per-image torchvision transforms + DataLoader(workers="
          f"{b.workers}) + fp32 (Oracle: Step A by loss.backward()); ours = this runner's train_step; "
          f"MiB = peak memory ({rows[0]['peak_mem_kind'] if rows else ''}); floor = images/s at the measured "
          "dense rate (best of matmul and conv probes)")
    print(format_table(rows))
    print(f"-> {path}", flush=True)


def print_concurrent_table(rc: RunConfig, rows: list[dict[str, Any]], pair: tuple[str, str], method: str,
                           device_type: str, path: Path) -> None:
    """One line per k: per-run and aggregate images/s, and the aggregate's speed-up over the first k."""
    print(f"\n{method} {pair[0]}-{pair[1]}, k runs at once on one {device_type} (ours, "
          f"{rc.bench.repeats} x {rc.bench.steps} steps each after a barrier):")
    print(f"{'k':>3}  {'threads/run':>11}  {'per run img/s':>13}  {'aggregate img/s':>15}  {'speed-up':>8}")
    for r in rows:
        print(f"{r['k']:>3}  {r['threads_per_run']:>11}  {r['per_run_img_s']:>13.1f}  {r['aggregate_img_s']:>15.1f}  "
              f"{r['speedup']:>8.2f}")
    print(f"-> {path}", flush=True)


def format_cohort_table(rows: list[dict[str, Any]]) -> str:
    """One line per preset: both aggregate rates, the measured and the FLOP-predicted ratio, peak memory."""
    f = fmt_or_blank
    head = ["preset", "members", "batch", "solo img/s", "cohort img/s", "ratio", "flop ratio", "largest solo MiB",
            "cohort MiB"]
    body = [[r["preset"], str(r["members"]), str(r["batch_size"]), f(r.get("solo_img_s")), f(r.get("cohort_img_s")),
             f(r.get("ratio"), ".2f"), f(r.get("flop_ratio"), ".2f"), f(r.get("solo_largest_peak_mem_mib")),
             f(r.get("cohort_peak_mem_mib"))] for r in rows]
    return render(head, body, left=1)


def print_cohort_table(rc: RunConfig, rows: list[dict[str, Any]], common: dict[str, Any], device: torch.device,
                       path: Path) -> None:
    """The conditions of the run, what each column means, the table, and where the CSV went."""
    print_conditions("bench cohorts", rc, common, device)
    print("solo = each member's train_step computing its own teacher outputs, members one after another; "
          "cohort = teacher outputs once per distinct input, then every member's train_step; img/s = members x "
          "batch x steps / time; ratio = cohort/solo; flop ratio = solo FLOPs / cohort FLOPs per batch (the "
          f"ratio the FLOPs predict); MiB = peak memory ({rows[0]['peak_mem_kind'] if rows else ''}) of the "
          "largest member trained alone and of the cohort")
    print(format_cohort_table(rows))
    print(f"-> {path}", flush=True)
