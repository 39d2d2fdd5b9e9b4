"""Timing and peak memory of the two parts, measured so that neither side is favoured: each part warms up
alone (its peak memory is its own), then timed blocks alternate in ABBA order so a shared machine that
changes speed mid-run slows both alike."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from oracle_kd.tasks.bench.parts import Batches, Step


def sync_device(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timer read afterwards covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Part:
    """One side of the comparison: a step, its endless batch source and its cuDNN autotuning switch.

    `warm(n)` takes n untimed steps. `timed(steps)` first discards the `drain` batches a DataLoader made
    ahead while the other part ran and takes one untimed step (so its pipeline is back in its steady
    state, whether data-bound or compute-bound), then times `steps` steps, batches fetched inside the timed
    block, and returns images/s."""

    def __init__(self, step: Step, batches: Batches, *, batch_size: int,
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
        """Close the batch source now rather than at garbage collection."""
        if hasattr(self.batches, "close"):
            self.batches.close()  # drops the DataLoader iterator: its persistent workers exit


def measure(ref: Part | None, ours: Part, *, repeats: int, steps: int,
            bar: Any = None) -> tuple[list[float] | None, list[float]]:
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

    def __enter__(self) -> PeakMemory:
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

    def __exit__(self, *exc: object) -> None:
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
