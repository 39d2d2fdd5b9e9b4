"""bench.cohorts: what training runs together as a cohort buys over training the same runs one after another.

A cohort draws each batch once and computes the teacher's outputs once per distinct `TeacherInput` its
members declare (Step A's input gradient once for every single-step γ), then each member takes its own
step on them. The alternative a sweep would otherwise pay for is the members trained one after another,
each computing its own teacher outputs inside `forward_train`. Both are timed here on the same members
(separate copies of the same initial state, so that their optimizers never interfere), in one process,
over one endless batch stream:

- **solo**: per batch, one `train_step` of every member, each computing its own teacher outputs;
- **cohort**: per batch, `teacher_outputs` for all members' inputs once (under the step's autocast), then
  every member's `train_step` with its entry — the step `engine.trainer` takes for a cohort.

A "step" of either part is one batch for all members, so aggregate student images/s = members · batch ·
steps / block time, timed in ABBA-interleaved blocks (`measure`). Beside the measured ratio cohort/solo:
the ratio the FLOP counts predict (one solo step's FLOPs over one cohort step's), and the peak memory of
the cohort part against that of its largest member (parameters + extras) trained alone, which is what a
sweep running the members one after another needs at most. On CPU fp32 the two parts compute the same
numbers bit for bit (the tests check it), so the comparison is of cost alone.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from oracle_kd.config import RunConfig
from oracle_kd.core.teacher_view import TeacherInput, TeacherOut, teacher_outputs
from oracle_kd.data import DataBundle, build_loader, load_dataset
from oracle_kd.engine.hardware import apply_hardware, autocast, prepare_model, prepare_teacher
from oracle_kd.engine.state import seed_everything
from oracle_kd.engine.step import make_optimizer, train_step
from oracle_kd.errors import require
from oracle_kd.methods import Distiller, MethodConfig, build_distiller, method_entry, methods_in_table_order
from oracle_kd.models import build_model
from oracle_kd.tasks.bench.flops import step_flops
from oracle_kd.tasks.bench.measure import Part, PeakMemory, measure
from oracle_kd.tasks.bench.parts import EPOCH, Batches, Step, bench_batch, bench_split, synthetic_bundle
from oracle_kd.tasks.bench.report import (
    COHORT_COLUMNS,
    bench_out_dir,
    device_name,
    print_cohort_table,
    rounded,
    slug,
    write_csv,
)

log = logging.getLogger("oracle_kd")


@dataclass(frozen=True)
class MemberSpec:
    """One run of a cohort: its method (defaults + `overrides`) and its student."""

    method: str
    student: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.method}{f'({args})' if args else ''} {self.student}"


@dataclass(frozen=True)
class Preset:
    """A cohort to measure: one teacher, its members, and the data they share. `dataset` "digits" is the
    real 8x8 set (its own crop pad, no flip, as conf/dataset/digits.yaml); "cifar100" is synthetic uint8
    data of CIFAR-100's shape, so that the preset runs anywhere."""

    teacher: str
    members: tuple[MemberSpec, ...]
    dataset: str
    pad: int = 4
    flip: bool = True


_GRID_METHODS = ("dkd", "at", "fitnet", "kd", "sad", "oracle")
EXPLAINING_ONLY = ("ked",)  # distils superfeature-explaining models, not a plain pair
PRESETS: dict[str, Preset] = {
    "quick": Preset("resnet56", tuple(MemberSpec(m, "resnet20") for m in
                                      ("ce", "kd", "dkd", "at", "fitnet", "sad", "oracle")),
                    dataset="digits", pad=1, flip=False),
    "fig5_slice": Preset("resnet56", tuple(MemberSpec(m, s) for s in ("resnet20", "resnet32") for m in _GRID_METHODS),
                         dataset="cifar100"),
    "gamma_grid": Preset("resnet56", tuple(MemberSpec("oracle", "resnet20", (("gamma", g),))
                                           for g in (0.0, 0.1, 0.2, 0.5, 1.0, 2.0)), dataset="cifar100"),
    # methods that own more than a loss beside the KD family: CRD's bank over the split (the teacher pass shared),
    # OFD's own batch-statistics teacher pass on the unfolded teacher (nothing shared but the batch)
    "seams": Preset("resnet56", tuple(MemberSpec(m, "resnet20") for m in ("kd", "crd", "ofd", "oracle")),
                    dataset="cifar100"),
    # every registered method that distils plain models from one view (the registry's list, in its table order):
    # what a cohort of the CRD benchmark's pair costs against its runs one by one
    "benchmark": Preset("resnet56", tuple(MemberSpec(m, "resnet20") for m in methods_in_table_order()
                                          if m not in EXPLAINING_ONLY and method_entry(m)[0].needs_teacher
                                          and not method_entry(m)[0].views), dataset="cifar100"),
}


@dataclass
class BenchMember:
    """A built member: its Distiller (student, shared teacher, extras) and its own optimizer."""

    label: str
    distiller: Distiller
    optimizer: torch.optim.Optimizer

    @property
    def teacher_input(self) -> TeacherInput | None:
        return self.distiller.teacher_input()

    @property
    def size(self) -> int:
        """Parameters + extras: what "largest member" means for the memory comparison."""
        return sum(p.numel() for p in self.distiller.trainable_parameters())


@dataclass
class Setting:
    """What both parts of one preset share: the config, the data, the device, the teacher, the autocast."""

    rc: RunConfig
    preset: Preset
    bundle: DataBundle
    device: torch.device
    teacher: nn.Module
    amp: contextlib.AbstractContextManager = field(repr=False)
    teacher_with_bn: nn.Module | None = None  # for members whose method reads the BN layers (`teacher_bn`)

    def teacher_for(self, method: str) -> nn.Module:
        """The teacher a member's method reads, as `Stream.teacher_for` picks it."""
        return self.teacher_with_bn if method_entry(method)[0].teacher_bn and self.teacher_with_bn else self.teacher

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.bundle.in_channels, self.bundle.image_size, self.bundle.image_size)


def preset_bundle(rc: RunConfig, preset: Preset) -> tuple[DataBundle, str]:
    """(bundle, "real" | "synthetic"): digits from the package, or synthetic data of CIFAR-100's shape."""
    if preset.dataset == "digits":
        return load_dataset("digits", rc.dataset.root), "real"
    return synthetic_bundle(preset.dataset, max(rc.bench.synthetic_images, rc.bench.batch_size), rc.seed), "synthetic"


def open_setting(rc: RunConfig, name: str, device: torch.device, bundle: DataBundle | None = None) -> Setting:
    """The preset's data and its seeded, randomly initialised teacher prepared as a run prepares it."""
    preset = PRESETS[name]
    bundle = bundle if bundle is not None else preset_bundle(rc, preset)[0]
    seed_everything(rc.seed)
    model = build_model(preset.teacher, bundle.num_classes, bundle.in_channels, image_size=bundle.image_size)
    with_bn = None
    if any(method_entry(m.method)[0].teacher_bn for m in preset.members) and rc.hardware.fold_teacher_bn:
        with_bn = prepare_teacher(copy.deepcopy(model), device, rc.hardware, keep_bn=True)
    teacher = prepare_teacher(model, device, rc.hardware)
    return Setting(rc, preset, bundle, device, teacher, autocast(device, rc.hardware.precision), with_bn)


def preset_batches(s: Setting) -> Batches:
    """The training batches, epoch after epoch: the one stream both parts draw from."""
    loader = build_loader(s.bundle, "train", batch_size=s.rc.bench.batch_size, seed=s.rc.seed, device=s.device,
                          channels_last=s.rc.hardware.channels_last, pad=s.preset.pad, flip=s.preset.flip,
                          drop_last=True)
    require(len(loader) >= 1, "bench.batch_size", s.rc.bench.batch_size,
            f"must not exceed the {len(s.bundle.train)} training images of {s.bundle.name}")
    epoch = 0
    while True:
        epoch += 1
        yield from loader.epoch(epoch)


def member_config(spec: MemberSpec, teacher_arch: str) -> MethodConfig:
    """The method's defaults with the spec's overrides, checked as a composed `method.*` would be."""
    cfg = dataclasses.replace(method_entry(spec.method)[1](), **dict(spec.overrides)).for_teacher(teacher_arch)
    cfg.validate()
    return cfg


def build_members(s: Setting, like: list[BenchMember] | None = None,
                  only: list[int] | None = None) -> list[BenchMember]:
    """Seeded students, their Distillers on the shared teacher and their optimizers (as `Member.build`
    does); `like`: load each one's initial state, so the copies start exactly where the originals do;
    `only`: just these members (by index)."""
    members = []
    for i in (only if only is not None else range(len(s.preset.members))):
        spec = s.preset.members[i]
        seed_everything(s.rc.seed)
        student = prepare_model(build_model(spec.student, s.bundle.num_classes, s.bundle.in_channels,
                                            image_size=s.bundle.image_size), s.device, s.rc.hardware)
        d = build_distiller(member_config(spec, s.preset.teacher), student, s.teacher_for(spec.method),
                            data=bench_split(s.bundle.num_classes, s.bundle.image_size, s.bundle.in_channels))
        d = d.to(s.device).train()
        if like is not None:
            d.load_trainable_state_dict(like[i].distiller.trainable_state_dict())
        members.append(BenchMember(spec.label, d, make_optimizer(d.trainable_parameters(), s.rc.train)))
    return members


def solo_step(members: list[BenchMember], amp: contextlib.AbstractContextManager) -> Step:
    """One batch for every member, each computing its own teacher outputs: the members run one by one."""
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        for m in members:
            train_step(m.distiller.forward_train, m.optimizer, bench_batch(x, y, m.distiller.views), EPOCH, amp)

    return step


def cohort_step(members: list[BenchMember], teacher: nn.Module, amp: contextlib.AbstractContextManager) -> Step:
    """One batch for every member, the teacher's outputs computed once per distinct input, as
    `engine.trainer` does for a cohort (`Stream.teacher_outputs`, then each member's `train_step`)."""
    keys = [m.teacher_input for m in members]
    inputs = [k for k in keys if k is not None]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        outs: dict[TeacherInput, TeacherOut] = {}
        if inputs:
            with amp:
                outs = teacher_outputs(teacher, inputs, x, y)
        for m, key in zip(members, keys):
            train_step(m.distiller.forward_train, m.optimizer, bench_batch(x, y, m.distiller.views), EPOCH, amp,
                       teacher_out=outs[key] if key is not None else None)

    return step


def _largest_alone(s: Setting, solo: list[BenchMember], batches: Batches,
                   bar: Any) -> tuple[str, PeakMemory]:
    """Build and warm the largest member alone: the peak memory of a sweep running the members in turn."""
    i = max(range(len(solo)), key=lambda k: solo[k].size)  # the first of the largest on a tie
    with PeakMemory(s.device) as mem:
        alone = build_members(s, only=[i])
        Part(solo_step(alone, s.amp), batches, batch_size=s.rc.bench.batch_size, device=s.device).warm(
            s.rc.bench.warmup)
        del alone
    bar.update(s.rc.bench.warmup)
    return solo[i].label, mem


def _timed_columns(s: Setting, bar: Any) -> dict[str, Any]:
    """Peak memory of the largest member alone and of the cohort part (each built and warmed inside its
    block), then the solo and cohort parts timed ABBA-interleaved; the members are gone on return."""
    b, device = s.rc.bench, s.device
    batches = preset_batches(s)
    try:
        solo = build_members(s)
        n = len(solo)
        largest, largest_mem = _largest_alone(s, solo, batches, bar)
        with PeakMemory(device) as cohort_mem:
            together = build_members(s, like=solo)  # before any solo step: the same initial state
            cohort = Part(cohort_step(together, s.teacher, s.amp), batches, batch_size=n * b.batch_size,
                          device=device)
            cohort.warm(b.warmup)
        bar.update(b.warmup)
        alone = Part(solo_step(solo, s.amp), batches, batch_size=n * b.batch_size, device=device)
        alone.warm(b.warmup)
        bar.update(b.warmup)
        solo_rates, cohort_rates = measure(alone, cohort, repeats=b.repeats, steps=b.steps, bar=bar)
    finally:
        batches.close()
    assert solo_rates is not None
    solo_img_s, cohort_img_s = statistics.median(solo_rates), statistics.median(cohort_rates)
    return {
        "members": n, "member_list": "; ".join(m.label for m in solo),
        "teacher_inputs": len({m.teacher_input for m in solo} - {None}),
        "solo_img_s": rounded(solo_img_s), "cohort_img_s": rounded(cohort_img_s),
        "ratio": rounded(cohort_img_s / solo_img_s, 3),
        "solo_img_s_repeats": ";".join(f"{v:.1f}" for v in solo_rates),
        "cohort_img_s_repeats": ";".join(f"{v:.1f}" for v in cohort_rates),
        "ratio_repeats": ";".join(f"{c / r:.3f}" for r, c in zip(solo_rates, cohort_rates)),
        "peak_mem_kind": cohort_mem.kind, "largest_member": largest,
        "solo_largest_peak_mem_mib": rounded(largest_mem.mib), "cohort_peak_mem_mib": rounded(cohort_mem.mib),
        "mem_ratio": (rounded(cohort_mem.mib / largest_mem.mib, 3)
                      if cohort_mem.mib is not None and largest_mem.mib is not None and largest_mem.mib > 0 else None),
    }


def step_flop_counts(rc: RunConfig, name: str, device: torch.device, bundle: DataBundle) -> tuple[int, int]:
    """(FLOPs of one solo step, of one cohort step) on fresh uncompiled members (a compiled step hides its
    operations from the counter), both on the stream's first batch."""
    count_rc = dataclasses.replace(rc, hardware=dataclasses.replace(rc.hardware, compile=False))
    s = open_setting(count_rc, name, device, bundle)
    batches = preset_batches(s)
    x, y = next(batches)
    batches.close()
    members = build_members(s)  # FLOPs do not depend on the weights: both steps may train the same copies
    return step_flops(solo_step(members, s.amp), x, y), step_flops(cohort_step(members, s.teacher, s.amp), x, y)


def preset_row(rc: RunConfig, name: str, device: torch.device, common: dict[str, Any], bar: Any) -> dict[str, Any]:
    """Measure one preset: its CSV row."""
    preset = PRESETS[name]
    bundle, kind = preset_bundle(rc, preset)
    bar.set_description(f"cohort {name}")
    s = open_setting(rc, name, device, bundle)
    row: dict[str, Any] = {
        **common, "preset": name, "data": kind, "dataset": bundle.name.removeprefix("synthetic-"),
        "image_shape": f"{bundle.in_channels}x{bundle.image_size}x{bundle.image_size}",
        "num_classes": bundle.num_classes, "teacher": preset.teacher, **_timed_columns(s, bar)}
    del s
    if rc.bench.flops:
        solo, cohort = step_flop_counts(rc, name, device, bundle)
        row.update(solo_step_gflop=rounded(solo / 1e9, 3), cohort_step_gflop=rounded(cohort / 1e9, 3),
                   flop_ratio=rounded(solo / cohort, 3))
    log.info("bench cohort %s (%d members): solo %.1f img/s, cohort %.1f img/s (%.2fx%s)", name, row["members"],
             row["solo_img_s"], row["cohort_img_s"], row["ratio"],
             f"; FLOPs predict {row['flop_ratio']:.2f}x" if rc.bench.flops else "")
    return row


def common_columns(rc: RunConfig, device: torch.device, name: str, started: datetime) -> dict[str, Any]:
    """The columns every preset's row shares: when, on what, with which software and settings."""
    import platform

    b, hw = rc.bench, rc.hardware
    return {
        "timestamp": started.isoformat(timespec="seconds"), "device": device.type, "device_name": name,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(terse=True), "batch_size": b.batch_size, "steps": b.steps,
        "repeats": b.repeats, "warmup": b.warmup, "precision": hw.precision, "channels_last": hw.channels_last,
        "compile": hw.compile, "cudnn_benchmark": hw.cudnn_benchmark, "fold_teacher_bn": hw.fold_teacher_bn,
    }


def cohort_bench(rc: RunConfig) -> dict[str, Any]:
    """task=bench with bench.cohorts: one row per preset, the table printed, the CSV written."""
    b = rc.bench
    device = apply_hardware(rc.hardware)
    started = datetime.now(timezone.utc)
    name = device_name(device)
    common = common_columns(rc, device, name, started)
    log.info("bench: cohort vs solo for %s, batch %d, %d x %d steps after %d warm-up, on %s (%s, %d threads)",
             ", ".join(b.cohorts), b.batch_size, b.repeats, b.steps, b.warmup, device, name, common["threads"])
    per_preset = 3 * b.warmup + 2 * b.repeats * (b.steps + 1)
    bar = tqdm(total=len(b.cohorts) * per_preset, disable=not rc.progress, desc="bench", unit="step",
               mininterval=1.0, dynamic_ncols=True)
    try:
        rows = [preset_row(rc, preset, device, common, bar) for preset in b.cohorts]
    finally:
        bar.close()
    path = bench_out_dir(rc) / f"cohort_{slug(name)}_{started.strftime('%Y%m%d-%H%M%S')}.csv"
    write_csv(rows, path, COHORT_COLUMNS)
    print_cohort_table(rc, rows, common, device, path)
    return {"csv": str(path), "rows": rows}

