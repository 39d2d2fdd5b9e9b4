"""task=bench: training images/s of the reference loop against this runner's step (issue 7).

For every teacher-student pair x method, on one batch size and one device, in this one process:

(a) **the reference loop**, as the released Oracle code and mdistiller write it: a `torch.utils.data.Dataset`
    over uint8 HWC images handing PIL images to torchvision's per-image `RandomCrop(32, padding=4)`,
    `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(...)`, batched by a `DataLoader` with `bench.workers`
    worker processes, fp32. For Oracle KD, Step A is written out as the released `Refiner` does it: the
    input gets `requires_grad`, `CE(teacher(x), y).backward()` fills x.grad *and every teacher parameter's
    .grad* (the teacher's parameters require grad and are never zeroed, as there), x* = x − γ·|x|⊙x.grad,
    teacher(x*) under no_grad, then the student's CE + Hinton KL (the released `DistillKL`), backward, SGD.
    Other methods run our `Distiller.forward_train` in fp32 behind that same DataLoader (mdistiller's loop).
(b) **this runner**: the device-resident uint8 data with batched augmentation (`build_loader`) and the
    runner's own `train_step`, with the `hardware.*` switches (`apply_hardware`, `prepare_model`, `autocast`).

Each part is built and warmed up alone (`bench.warmup` untimed steps; the DataLoader's persistent workers
start then), which is when its peak memory is taken. Then `bench.repeats` timed blocks of `bench.steps`
steps each, data loading included, alternate between the parts in ABBA order (a, b, b, a, ...), so a shared
machine that changes speed mid-run slows both alike; each block starts with one untimed step (and the
reference first drops the batches its workers made ahead while (b) ran). images/s = batch·steps / block
time; the median block is reported, and every block is kept in the CSV. Beside it: the peak memory of the part, and its distance from a FLOP
floor — the step's FLOPs (counted with `torch.utils.flop_counter`'s formulas: convolutions and matmuls,
forward and backward, only the gradients actually computed) divided by the device's measured dense rate
(the better of a large matmul and a large 3x3 convolution, in the step's precision).
One CSV row per (pair, method) goes to `<results_dir>/bench/bench_<device>_<timestamp>.csv`.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import gc
import io
import logging
import os
import platform
import re
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from oracle_kd import records
from oracle_kd.config import RunConfig, parse_pair
from oracle_kd.data import DataBundle, ImageSet, build_loader, load_dataset
from oracle_kd.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from oracle_kd.errors import DatasetError
from oracle_kd.methods import MethodConfig, available_methods, build_distiller, method_entry
from oracle_kd.methods.oracle import OracleConfig
from oracle_kd.models import build_model
from oracle_kd.train import apply_hardware, autocast, prepare_model, prepare_teacher, seed_everything, train_step

log = logging.getLogger("oracle_kd")

EPOCH = 1  # the epoch handed to forward_train (DKD's warm-up factor; no other method reads it)
IMAGE_SIZE, CROP_PAD = 32, 4
SHAPES = {"cifar100": (100, CIFAR100_MEAN, CIFAR100_STD), "cifar10": (10, CIFAR10_MEAN, CIFAR10_STD)}
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

Step = Callable[[torch.Tensor, torch.Tensor], None]


# ----------------------------------------------------------------------------- data
def synthetic_bundle(name: str, n_train: int, seed: int) -> DataBundle:
    """Random uint8 images and labels of a CIFAR dataset's shape, classes and normalisation."""
    classes, mean, std = SHAPES[name]
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> ImageSet:
        return ImageSet(torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g, dtype=torch.uint8),
                        torch.randint(0, classes, (n,), generator=g))

    return DataBundle(name=f"synthetic-{name}", train=split(n_train), test=split(classes), num_classes=classes,
                      in_channels=3, image_size=IMAGE_SIZE, mean=mean, std=std,
                      class_names=[str(c) for c in range(classes)])


def bench_data(rc: RunConfig) -> tuple[DataBundle, str]:
    """(bundle, "real" | "synthetic"): the CIFAR set from dataset.root when it is there, else synthetic data
    of its shape with enough images that one epoch covers every step a part takes."""
    b = rc.bench
    name = "cifar100" if b.dataset == "synthetic" else b.dataset
    if b.dataset != "synthetic":
        try:
            return load_dataset(name, rc.dataset.root), "real"
        except DatasetError as exc:
            log.info("bench: %s is not readable under %s (%s): synthetic uint8 data of its shape instead",
                     name, rc.dataset.root, str(exc)[:120])
    n = max(b.synthetic_images, b.batch_size * (b.warmup + b.repeats * (b.steps + 1 + 2 * b.workers) + 1))
    return synthetic_bundle(name, n, rc.seed), "synthetic"


class ReferenceDataset(torch.utils.data.Dataset):
    """torchvision's CIFAR dataset in miniature: uint8 HWC numpy images, each handed to the transform as a
    PIL image, with a Python int label."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable[[Any], torch.Tensor]) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[[Any], torch.Tensor]:
    """The released code's (and mdistiller's) CIFAR train transform."""
    from torchvision import transforms

    return transforms.Compose([transforms.RandomCrop(IMAGE_SIZE, padding=CROP_PAD), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(mean, std)])


def reference_loader(bundle: DataBundle, *, batch_size: int, workers: int, device: torch.device,
                     seed: int) -> torch.utils.data.DataLoader:
    """DataLoader(shuffle, drop_last, pin_memory on CUDA); persistent workers, so their start-up is paid once,
    in the warm-up."""
    data = bundle.train
    assert isinstance(data, ImageSet)
    dataset = ReferenceDataset(data.images.permute(0, 2, 3, 1).contiguous().numpy(), data.labels.numpy(),
                               reference_transform(bundle.mean, bundle.std))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, pin_memory=device.type == "cuda",
                                       persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


def reference_batches(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:  # epoch after epoch, as a training loop would
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def our_batches(bundle: DataBundle, rc: RunConfig, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = build_loader(bundle, "train", batch_size=rc.bench.batch_size, seed=rc.seed, device=device,
                          channels_last=rc.hardware.channels_last, pad=CROP_PAD, flip=True, drop_last=True)
    epoch = 0
    while True:
        epoch += 1
        yield from loader.epoch(epoch)


# ----------------------------------------------------------------------------- the two steps
def reference_reinforce(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, *, gamma: float,
                        reduction: str = "mean") -> torch.Tensor:
    """The released `Refiner.get_refined_image`: x gets requires_grad (in place, so the student later sees
    a grad-requiring input too) and `loss.backward()` fills x.grad and, for a teacher whose parameters
    require grad, every parameter's .grad. Returns x − γ·x.grad·|x| (still attached to x, as there)."""
    x.requires_grad_(True)
    logits, _ = teacher(x)
    F.cross_entropy(logits, y, reduction=reduction).backward()
    return x - x.grad * x.detach().abs() * gamma


def reference_kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The released `DistillKL` (RepDistiller's): KL summed, × τ², / batch."""
    p_s = F.log_softmax(s_logits / temperature, dim=1)
    p_t = F.softmax(t_logits / temperature, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * temperature ** 2 / s_logits.shape[0]


def _sgd(params: Any, rc: RunConfig) -> torch.optim.Optimizer:
    t = rc.train
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov)


def _models(rc: RunConfig, teacher: str, student: str, classes: int) -> tuple[nn.Module, nn.Module]:
    seed_everything(rc.seed)  # both parts start from the same weights
    return (build_model(teacher, classes, 3, image_size=IMAGE_SIZE),
            build_model(student, classes, 3, image_size=IMAGE_SIZE))


def reference_step(rc: RunConfig, cfg: MethodConfig, teacher_arch: str, student_arch: str, classes: int,
                   device: torch.device) -> Step:
    """One step of the reference loop (fp32, plain NCHW, no compile)."""
    t_model, s_model = _models(rc, teacher_arch, student_arch, classes)
    t_model, s_model = t_model.to(device), s_model.to(device)
    if not isinstance(cfg, OracleConfig):  # mdistiller-style: the method's loss, the DataLoader data path
        d = build_distiller(cfg, s_model, t_model if method_entry(cfg.name)[0].needs_teacher else None,
                            (3, IMAGE_SIZE, IMAGE_SIZE)).to(device).train()
        opt = _sgd(d.trainable_parameters(), rc)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            _, losses = d.forward_train(x, y, EPOCH)
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    # The released Oracle loop (utils.train_kd): teacher in eval mode with grad-requiring parameters.
    t_model.eval()
    s_model.train()
    opt = _sgd(s_model.parameters(), rc)

    def oracle_step(x: torch.Tensor, y: torch.Tensor) -> None:
        x_star = reference_reinforce(t_model, x, y, gamma=cfg.gamma, reduction=cfg.gamma_reduction)
        for _ in range(1, cfg.rec_num):
            for p in t_model.parameters():
                p.grad = None
            x_star = reference_reinforce(t_model, x_star.detach(), y, gamma=cfg.gamma, reduction=cfg.gamma_reduction)
        with torch.no_grad():
            t_logits, _ = t_model(x_star)
        s_logits, _ = s_model(x)
        loss = (cfg.ce_weight * F.cross_entropy(s_logits, y)
                + cfg.alpha * reference_kd_loss(s_logits, t_logits, cfg.temperature))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return oracle_step


def our_step(rc: RunConfig, cfg: MethodConfig, teacher_arch: str, student_arch: str, classes: int,
             device: torch.device) -> Step:
    """The runner's step: prepare_model (channels_last, compile), the method's Distiller, train_step under
    the configured autocast."""
    t_model, s_model = _models(rc, teacher_arch, student_arch, classes)
    needs_teacher = method_entry(cfg.name)[0].needs_teacher
    student = prepare_model(s_model, device, rc)
    teacher = prepare_teacher(t_model, device, rc) if needs_teacher else None
    d = build_distiller(cfg, student, teacher, (3, IMAGE_SIZE, IMAGE_SIZE)).to(device).train()
    opt = _sgd(d.trainable_parameters(), rc)
    amp = autocast(device, rc.hardware.precision)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(d.forward_train, opt, x, y, EPOCH, amp)

    return step


# ----------------------------------------------------------------------------- measuring
def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Part:
    """One side of the comparison: a step, its endless batch source and its cuDNN autotuning switch.

    `warm(n)` takes n untimed steps. `timed(steps)` first discards the `drain` batches a DataLoader made
    ahead while the other part ran and takes one untimed step (so its pipeline is back in its steady
    state, whether data-bound or compute-bound), then times `steps` steps, batches fetched inside the timed
    block, and returns images/s."""

    def __init__(self, step: Step, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *, batch_size: int,
                 device: torch.device, drain: int = 0, cudnn_benchmark: bool | None = None) -> None:
        self.step, self.batches, self.batch_size, self.device = step, batches, batch_size, device
        self.drain, self.cudnn_benchmark = drain, cudnn_benchmark

    @contextlib.contextmanager
    def _switches(self) -> Iterator[None]:
        saved = torch.backends.cudnn.benchmark
        if self.cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = saved

    def warm(self, n: int) -> None:
        with self._switches():
            for _ in range(n):
                self.step(*next(self.batches))
            sync_device(self.device)

    def timed(self, steps: int) -> float:
        with self._switches():
            for _ in range(self.drain):
                next(self.batches)
            self.step(*next(self.batches))
            sync_device(self.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                self.step(*next(self.batches))
            sync_device(self.device)
            return self.batch_size * steps / (time.perf_counter() - t0)

    def close(self) -> None:
        if hasattr(self.batches, "close"):
            self.batches.close()  # drops the DataLoader iterator: its persistent workers exit


def measure(ref: Part | None, ours: Part, *, repeats: int, steps: int, bar: Any = None) -> tuple[list[float] | None, list[float]]:
    """images/s of `repeats` timed blocks of each part, interleaved ABBA (ref, ours, ours, ref, ...) so that
    a machine that speeds up or slows down during the run affects both alike."""
    ref_rates: list[float] = []
    ours_rates: list[float] = []
    for r in range(repeats):
        order = [(ref, ref_rates), (ours, ours_rates)]
        for part, rates in (order if r % 2 == 0 else order[::-1]):
            if part is not None:
                rates.append(part.timed(steps))
                if bar is not None:
                    bar.update(steps + 1)
    return (ref_rates if ref is not None else None), ours_rates


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so RSS deltas start from the floor


class PeakMemory:
    """Peak memory of a block, in MiB over what was in use when it began.

    CUDA: `torch.cuda.max_memory_allocated` (kind cuda_max_allocated_delta). CPU: the main process's
    resident set sampled every 10 ms (kind cpu_rss_peak_delta; DataLoader worker processes not included),
    or, without /proc, `resource.getrusage` maxrss of the process (kind cpu_maxrss, absolute)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib: float | None = None
        if device.type == "cuda":
            self.kind = "cuda_max_allocated_delta"
        else:
            self.kind = "cpu_rss_peak_delta" if _rss_bytes() is not None else "cpu_maxrss"

    def __enter__(self) -> "PeakMemory":
        _release_memory(self.device)
        if self.kind.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.kind == "cpu_rss_peak_delta":
            self._base = self._peak = _rss_bytes() or 0
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __exit__(self, *exc: Any) -> None:
        if self.kind.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif self.kind == "cpu_rss_peak_delta":
            self._stop.set()
            self._thread.join()
            self.mib = (max(self._peak, _rss_bytes() or 0) - self._base) / 2**20
        else:
            import resource

            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.mib = maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10


class FlopCount:
    """Counts FLOPs with the formulas `torch.utils.flop_counter.FlopCounterMode` uses (its `flop_registry`:
    convolutions and matmuls, forward and backward; convolution_backward counts only the gradients its
    output_mask asks for). FlopCounterMode itself is not used because its module tracker puts backward
    hooks on module inputs, which `torch.autograd.grad` w.r.t. a leaf input (our Step A) refuses."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    counter.total += int(formula(*args, **kwargs, out_val=out))
                return out

        self.total = 0
        self._mode = _Mode()

    def __enter__(self) -> "FlopCount":
        self.total = 0
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


def step_flops(step: Step, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one step (see FlopCount)."""
    with FlopCount() as counter:
        step(x, y)
    return counter.total


def _best_time(fn: Callable[[], Any], device: torch.device, reps: int, inner: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        sync_device(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync_device(device)
        times.append((time.perf_counter() - t0) / inner)
    return min(times)


def dense_rates(device: torch.device, dtype: torch.dtype, reps: int = 10) -> dict[str, float]:
    """The device's dense compute rate in FLOP/s, probed two ways, each the best of `reps` timings:
    "matmul" (n x n @ n x n; n = 8192 on CUDA, 2048 on CPU) and "conv" (a 3x3, 256 -> 256 channel
    convolution at 16 x 16; batch 256 on CUDA, 32 on CPU).

    The best timing, not the median: the floor is a limit, and on a shared machine noise only ever lowers
    a rate (2-core CPU, n=2048: single timings spread 100-165 GFLOP/s). Both probes, because neither
    library reaches the peak everywhere: on the AMD EPYC this was written on, MKL's sgemm reaches about
    155 GFLOP/s and oneDNN's convolution about 245. On CUDA fp32 the matmul may use TF32 exactly when
    cuDNN convolutions may (torch.backends.cudnn.allow_tf32)."""
    cuda = device.type == "cuda"
    g = torch.Generator(device=device).manual_seed(0)
    n = 8192 if cuda else 2048
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    batch, c, hw = (256 if cuda else 32), 256, 16
    x = torch.randn(batch, c, hw, hw, device=device, generator=g).to(dtype)
    w = torch.randn(c, c, 3, 3, device=device, generator=g).to(dtype)
    tf32, bench_flag = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.benchmark = True
    inner = 10 if cuda else 1
    try:
        with torch.no_grad():
            return {"matmul": 2 * n ** 3 / _best_time(lambda: a @ b, device, reps, inner),
                    "conv": 2 * batch * c * c * 9 * hw * hw / _best_time(lambda: F.conv2d(x, w, padding=1), device,
                                                                        reps, inner)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = tf32, bench_flag


# ----------------------------------------------------------------------------- context
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def method_config(rc: RunConfig, name: str, teacher_arch: str) -> MethodConfig:
    """The composed `method.*` for the method it names, every other method's defaults."""
    cfg = rc.method if rc.method.name == name else method_entry(name)[1]()
    return cfg.for_teacher(teacher_arch)


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "" if v is None else format(v, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["method", "pair", "batch", "ref img/s", "ours img/s", "ratio", "ref MiB", "ours MiB",
            "ref floor", "ours floor", "ref %floor", "ours %floor"]
    body = [[r["method"], r["pair"], str(r["batch_size"]), _fmt(r.get("ref_img_s")), _fmt(r.get("ours_img_s")),
             _fmt(r.get("ratio"), ".2f"), _fmt(r.get("ref_peak_mem_mib")), _fmt(r.get("ours_peak_mem_mib")),
             _fmt(r.get("ref_floor_img_s")), _fmt(r.get("ours_floor_img_s")), _fmt(r.get("ref_pct_of_floor"), ".1f"),
             _fmt(r.get("ours_pct_of_floor"), ".1f")] for r in rows]
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    records.atomic_write_bytes(path, buf.getvalue().encode())


def _r(v: float | None, digits: int = 1) -> float | None:
    return None if v is None else round(float(v), digits)


# ----------------------------------------------------------------------------- the task
def bench(rc: RunConfig) -> dict[str, Any]:
    """task=bench: time (a) and (b) for every pair x method, print the table, write the CSV."""
    import torchvision

    b = rc.bench
    device = apply_hardware(rc)
    hw = rc.hardware
    bundle, data_kind = bench_data(rc)
    classes = bundle.num_classes
    methods = list(b.methods) or available_methods()
    pairs = [parse_pair(p) for p in b.pairs]
    started = datetime.now(timezone.utc)
    name = device_name(device)
    threads = torch.get_num_threads()
    log.info("bench: %d pair(s) x %d method(s), batch %d, %s x %d steps after %d warm-up, on %s (%s, %d threads), "
             "%s %s data", len(pairs), len(methods), b.batch_size, b.repeats, b.steps, b.warmup, device, name,
             threads, data_kind, bundle.name)

    rates: dict[torch.dtype, float] = {}
    probes = ""
    if b.flops:
        dtypes = [torch.float32] + ([torch.bfloat16] if hw.precision == "bf16" else [])
        measured = {dt: dense_rates(device, dt) for dt in dtypes}
        rates = {dt: max(r.values()) for dt, r in measured.items()}
        probes = "; ".join(f"{str(dt).removeprefix('torch.')} " + " ".join(f"{k} {v / 1e12:.4f}" for k, v in r.items())
                           for dt, r in measured.items())
        log.info("bench: dense rate (TFLOP/s) %s", probes)
    ours_dtype = torch.bfloat16 if hw.precision == "bf16" else torch.float32
    count_rc = dataclasses.replace(rc, hardware=dataclasses.replace(hw, compile=False))
    per_part = b.warmup + b.repeats * (b.steps + 1)
    bar = tqdm(total=len(pairs) * len(methods) * per_part * (2 if b.reference else 1), disable=not rc.progress,
               desc="bench", unit="step", mininterval=1.0, dynamic_ncols=True)
    rows = []
    common = {
        "timestamp": started.isoformat(timespec="seconds"), "device": device.type, "device_name": name,
        "threads": threads, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(terse=True), "data": data_kind,
        "dataset": bundle.name.removeprefix("synthetic-"), "image_shape": f"3x{IMAGE_SIZE}x{IMAGE_SIZE}",
        "num_classes": classes, "batch_size": b.batch_size, "steps": b.steps, "repeats": b.repeats,
        "warmup": b.warmup, "ref_workers": b.workers, "precision": hw.precision,
        "channels_last": hw.channels_last, "compile": hw.compile, "cudnn_benchmark": hw.cudnn_benchmark,
        "fold_teacher_bn": hw.fold_teacher_bn,
        "rate_probes": probes or None,
    }
    try:
        for teacher_arch, student_arch in pairs:
            for method in methods:
                cfg = method_config(rc, method, teacher_arch)
                pair = f"{teacher_arch}-{student_arch}"
                row: dict[str, Any] = {**common, "pair": pair, "teacher": teacher_arch, "student": student_arch,
                                       "method": method}
                ref, ref_mem = None, PeakMemory(device)
                if b.reference:  # built and warmed first, alone, so that its peak memory is its own
                    bar.set_description(f"{method} {pair} reference warm-up")
                    with ref_mem:
                        loader = reference_loader(bundle, batch_size=b.batch_size, workers=b.workers, device=device,
                                                  seed=rc.seed)
                        ref = Part(reference_step(rc, cfg, teacher_arch, student_arch, classes, device),
                                   reference_batches(loader, device), batch_size=b.batch_size, device=device,
                                   drain=b.workers * (loader.prefetch_factor or 0), cudnn_benchmark=True)
                        del loader  # the batch generator holds it
                        ref.warm(b.warmup)
                    bar.update(b.warmup)
                bar.set_description(f"{method} {pair} ours warm-up")
                with PeakMemory(device) as ours_mem:
                    ours = Part(our_step(rc, cfg, teacher_arch, student_arch, classes, device),
                                our_batches(bundle, rc, device), batch_size=b.batch_size, device=device)
                    ours.warm(b.warmup)
                bar.update(b.warmup)
                bar.set_description(f"{method} {pair} timing")
                try:
                    ref_rates, ours_rates = measure(ref, ours, repeats=b.repeats, steps=b.steps, bar=bar)
                finally:
                    for part in (ref, ours):
                        if part is not None:
                            part.close()
                    del ref, ours
                ref_img_s = statistics.median(ref_rates) if ref_rates else None
                ours_img_s = statistics.median(ours_rates)
                row.update(ref_img_s=_r(ref_img_s), ours_img_s=_r(ours_img_s),
                           ratio=_r(ours_img_s / ref_img_s, 3) if ref_img_s else None,
                           ref_img_s_repeats=";".join(f"{v:.1f}" for v in ref_rates) if ref_rates else None,
                           ours_img_s_repeats=";".join(f"{v:.1f}" for v in ours_rates),
                           peak_mem_kind=ours_mem.kind, ref_peak_mem_mib=_r(ref_mem.mib),
                           ours_peak_mem_mib=_r(ours_mem.mib))
                if b.flops:
                    row.update(flop_columns(count_rc, cfg, teacher_arch, student_arch, classes, device, rates,
                                            ours_dtype, ref_img_s, ours_img_s, reference=b.reference))
                rows.append(row)
                log.info("bench %s %s: reference %s img/s, ours %.1f img/s%s", method, pair,
                         _fmt(ref_img_s, ".1f") or "-", ours_img_s,
                         f" ({ours_img_s / ref_img_s:.2f}x)" if ref_img_s else "")
    finally:
        bar.close()

    out_dir = Path(b.out_dir) if b.out_dir else Path(rc.results_dir) / "bench"
    path = out_dir / f"bench_{slug(name)}_{started.strftime('%Y%m%d-%H%M%S')}.csv"
    write_csv(rows, path)
    print(f"bench on {name} ({device}, {threads} threads; torch {torch.__version__}), {data_kind} "
          f"{common['dataset']} data, batch {b.batch_size}, median of {b.repeats} x {b.steps} steps; "
          f"hardware: {hw.precision}, channels_last={hw.channels_last}, compile={hw.compile}")
    print("ref = per-image torchvision transforms + DataLoader(workers="
          f"{b.workers}) + fp32 (Oracle: Step A by loss.backward()); ours = this runner's train_step; "
          f"MiB = peak memory ({rows[0]['peak_mem_kind'] if rows else ''}); floor = images/s at the measured "
          "dense rate (best of matmul and conv probes)")
    print(format_table(rows))
    print(f"-> {path}", flush=True)
    out: dict[str, Any] = {"csv": str(path), "rows": rows}
    if b.concurrent:
        out["concurrent"] = concurrent_table(rc, pairs[0], methods[0], common, out_dir, started)
    return out


CONCURRENT_COLUMNS = ["timestamp", "device", "device_name", "torch", "python", "data", "dataset", "pair", "method",
                      "batch_size", "steps", "repeats", "precision", "channels_last", "compile", "k",
                      "threads_per_run", "per_run_img_s", "aggregate_img_s", "speedup"]


def concurrent_table(rc: RunConfig, pair: tuple[str, str], method: str, common: dict[str, Any], out_dir: Path,
                     started: datetime) -> dict[str, Any]:
    """bench.concurrent: aggregate images/s of k simultaneous runs of this runner's step (oracle_kd.concurrency)."""
    from oracle_kd.concurrency import concurrency_rows

    log.info("bench: %s %s-%s as k = %s concurrent runs", method, *pair, rc.bench.concurrent)
    rows = [{**common, **r} for r in concurrency_rows(rc, pair, method, list(rc.bench.concurrent))]
    path = out_dir / f"concurrent_{slug(common['device_name'])}_{started.strftime('%Y%m%d-%H%M%S')}.csv"
    write_csv(rows, path, CONCURRENT_COLUMNS)
    print(f"\n{method} {pair[0]}-{pair[1]}, k runs at once on one {common['device']} (ours, "
          f"{rc.bench.repeats} x {rc.bench.steps} steps each after a barrier):")
    print(f"{'k':>3}  {'threads/run':>11}  {'per run img/s':>13}  {'aggregate img/s':>15}  {'speed-up':>8}")
    for r in rows:
        print(f"{r['k']:>3}  {r['threads_per_run']:>11}  {r['per_run_img_s']:>13.1f}  {r['aggregate_img_s']:>15.1f}  "
              f"{r['speedup']:>8.2f}")
    print(f"-> {path}", flush=True)
    return {"csv": str(path), "rows": rows}


def flop_columns(rc: RunConfig, cfg: MethodConfig, teacher_arch: str, student_arch: str, classes: int,
                 device: torch.device, rates: dict[torch.dtype, float], ours_dtype: torch.dtype,
                 ref_img_s: float | None, ours_img_s: float, *, reference: bool) -> dict[str, Any]:
    """Step FLOPs of (a) and (b) on fresh uncompiled copies, and the floor they imply at the dense rate."""
    bs = rc.bench.batch_size
    g = torch.Generator(device=device).manual_seed(rc.seed)
    x = torch.randn(bs, 3, IMAGE_SIZE, IMAGE_SIZE, device=device, generator=g)
    y = torch.randint(0, classes, (bs,), device=device, generator=g)
    x_ours = x.contiguous(memory_format=torch.channels_last) if rc.hardware.channels_last else x
    ours = step_flops(our_step(rc, cfg, teacher_arch, student_arch, classes, device), x_ours, y)
    out: dict[str, Any] = {"ours_step_gflop": _r(ours / 1e9, 3), "ours_rate_tflops": _r(rates[ours_dtype] / 1e12, 4)}
    ours_floor = bs * rates[ours_dtype] / ours
    out.update(ours_floor_img_s=_r(ours_floor), ours_pct_of_floor=_r(100 * ours_img_s / ours_floor, 2))
    if reference:
        ref = step_flops(reference_step(rc, cfg, teacher_arch, student_arch, classes, device), x.clone(), y)
        ref_floor = bs * rates[torch.float32] / ref
        out.update(ref_step_gflop=_r(ref / 1e9, 3), ref_rate_tflops=_r(rates[torch.float32] / 1e12, 4),
                   ref_floor_img_s=_r(ref_floor),
                   ref_pct_of_floor=_r(100 * ref_img_s / ref_floor, 2) if ref_img_s else None)
    return out
