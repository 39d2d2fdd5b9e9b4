"""The `bench.*` section: its schema, defaults and checks, kept beside the task that reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from oracle_kd.errors import choice, require
from oracle_kd.methods import available_methods
from oracle_kd.models import available_models
from oracle_kd.tasks.bench.cohort import PRESETS as COHORT_PRESETS

BENCH_DATASETS = ("cifar100", "cifar10", "synthetic")
BENCH_MIN_REPEATS = 5  # the reported rate is a median of at least five timed blocks; tests lower it to stay fast


def parse_pair(pair: str) -> tuple[str, str]:
    """'teacher-student' (or 'teacher->student') -> (teacher, student); architecture names have no '-'."""
    teacher, sep, student = pair.partition("->") if "->" in pair else pair.partition("-")
    require(bool(sep and teacher and student and "-" not in student), "bench.pairs", pair,
            "must be 'teacher-student', e.g. resnet56-resnet20")
    return teacher.strip(), student.strip()


@dataclass
class BenchConfig:
    """task=bench: training images/s of the reference loop (per-image torchvision transforms through a
    DataLoader, fp32, Step A by `loss.backward()`) against this runner's step with the `hardware.*`
    switches, for every pair x method (oracle_kd/tasks/bench/).

    pairs: "teacher-student" (as run folders name them; "teacher->student" also accepted). methods: empty =
    every method; a method named by the composed `method=` keeps its `method.*` options, the others run
    with their defaults. dataset: cifar100 | cifar10 read from `dataset.root` when present, else synthetic
    uint8 data of its shape (`synthetic` forces it). Each timing is the median of `repeats` blocks of
    `steps` steps after `warmup` untimed steps. workers: the reference DataLoader's worker processes.
    reference=false times only this runner; flops=false skips the FLOP count and the matmul-rate probe.
    out_dir: where the CSV goes (default <results_dir>/bench). concurrent: run counts k; for each, k processes
    train the first pair x method at once and the aggregate images/s is recorded
    (oracle_kd/tasks/bench/concurrency.py). cohorts: preset names (quick, fig5_slice, gamma_grid, seams, benchmark); when
    given, only the cohort comparison runs: aggregate student images/s of each preset's runs trained together
    as a cohort against the same runs one after another (oracle_kd/tasks/bench/cohort.py; synthetic_images
    sizes its synthetic presets); pairs, methods, dataset, workers, reference and concurrent do not apply to it."""

    pairs: list[str] = field(default_factory=lambda: ["resnet56-resnet20"])
    methods: list[str] = field(default_factory=list)
    batch_size: int = 64
    steps: int = 10
    repeats: int = 5
    warmup: int = 3
    workers: int = 2
    dataset: str = "cifar100"
    synthetic_images: int = 5000
    reference: bool = True
    flops: bool = True
    out_dir: Optional[str] = None
    concurrent: list[int] = field(default_factory=list)  # e.g. [1,2,4,8]: sweep throughput, k runs at once
    cohorts: list[str] = field(default_factory=list)  # e.g. [quick]: cohort vs solo instead of the above

    def validate(self) -> None:
        """Names and ranges, checked on every composed config so a bad value fails before any timing."""
        require(len(self.pairs) >= 1, "bench.pairs", self.pairs, "must name at least one teacher-student pair")
        for pair in self.pairs:
            for arch in parse_pair(pair):
                require(arch in available_models(), "bench.pairs", pair,
                        f"names an unknown model {arch!r}; choose from: {', '.join(available_models())}")
        for m in self.methods:
            choice("bench.methods", m, available_methods())
        choice("bench.dataset", self.dataset, BENCH_DATASETS)
        require(self.batch_size >= 1, "bench.batch_size", self.batch_size, "must be >= 1")
        require(self.steps >= 1, "bench.steps", self.steps, "must be >= 1")
        require(self.repeats >= BENCH_MIN_REPEATS, "bench.repeats", self.repeats,
                f"must be >= {BENCH_MIN_REPEATS} (a median)")
        require(self.warmup >= 1, "bench.warmup", self.warmup, "must be >= 1 (the first step is never timed)")
        require(self.workers >= 0, "bench.workers", self.workers, "must be >= 0")
        require(self.synthetic_images >= 1, "bench.synthetic_images", self.synthetic_images, "must be >= 1")
        for k in self.concurrent:
            require(k >= 1, "bench.concurrent", self.concurrent, "must list run counts >= 1")
        for name in self.cohorts:
            choice("bench.cohorts", name, list(COHORT_PRESETS))
        require(len(set(self.cohorts)) == len(self.cohorts), "bench.cohorts", self.cohorts, "names a preset twice")
