"""The FLOP floor: a step's FLOPs over the device's measured dense rate, the images/s no implementation of
that step could beat on this device, so that a measured rate can be read as a share of what is possible."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from oracle_kd.config import RunConfig
from oracle_kd.methods import MethodConfig
from oracle_kd.tasks.bench.measure import sync_device
from oracle_kd.tasks.bench.parts import IMAGE_SIZE, Step, our_step
from oracle_kd.tasks.bench.reference import reference_step
from oracle_kd.tasks.bench.report import rounded


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

    def __enter__(self) -> FlopCount:
        self.total = 0
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
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
    out: dict[str, Any] = {"ours_step_gflop": rounded(ours / 1e9, 3),
                           "ours_rate_tflops": rounded(rates[ours_dtype] / 1e12, 4)}
    ours_floor = bs * rates[ours_dtype] / ours
    out.update(ours_floor_img_s=rounded(ours_floor), ours_pct_of_floor=rounded(100 * ours_img_s / ours_floor, 2))
    if reference:
        ref = step_flops(reference_step(rc, cfg, teacher_arch, student_arch, classes, device), x.clone(), y)
        ref_floor = bs * rates[torch.float32] / ref
        out.update(ref_step_gflop=rounded(ref / 1e9, 3), ref_rate_tflops=rounded(rates[torch.float32] / 1e12, 4),
                   ref_floor_img_s=rounded(ref_floor),
                   ref_pct_of_floor=rounded(100 * ref_img_s / ref_floor, 2) if ref_img_s else None)
    return out
