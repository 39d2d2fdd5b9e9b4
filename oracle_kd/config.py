"""Structured configs (the schema of conf/) and their validation.

Hydra composes `conf/`; every group is backed by a dataclass registered here, so an unknown key or a
value of the wrong type fails at composition. `validate` then checks ranges and names (architectures,
datasets, presets) and turns the composed DictConfig into typed objects the rest of the code uses.
All failures are `ConfigError`s with one line that names the key and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from oracle_kd.errors import ConfigError
from oracle_kd.methods import MethodConfig, available_methods, method_entry
from oracle_kd.methods.base import _require

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
TASKS = ("train", "plan", "tables", "analyze", "tune", "bench")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
STEMS = ("auto", "imagenet", "cifar")
BENCH_DATASETS = ("cifar100", "cifar10", "synthetic")
BENCH_MIN_REPEATS = 5  # the "median of >= 5 repeats"; tests lower it to stay fast


@dataclass
class DatasetConfig:
    """Which data and the train-time augmentation. `root` is where on-disk datasets live (not identity)."""

    name: str = "digits"
    root: str = "data"
    crop_pad: int = 4
    flip: bool = True
    test_fraction: float = 0.25  # digits only: the fixed held-out share
    workers: int = 4  # folder datasets (Tiny-ImageNet, ImageNet): DataLoader worker processes


@dataclass
class TeacherConfig:
    """checkpoint: `auto` (the finished `ce` run of this arch/dataset/seed in the store, trained first if
    missing) or a path to a state_dict. train: the `train/` preset an auto teacher is trained with
    (`same` = the student's)."""

    arch: str = "resnet56"
    checkpoint: str = "auto"
    train: str = "same"
    stem: str = "auto"


@dataclass
class StudentConfig:
    """stem (ResNet18/34/50/101 only): imagenet (7x7/2 + max-pool), cifar (3x3/1, no pool), or auto =
    cifar for inputs of at most 64 px (Tiny-ImageNet), imagenet above."""

    arch: str = "resnet20"
    stem: str = "auto"


@dataclass
class TrainConfig:
    """SGD with momentum and a multi-step learning-rate schedule (REFERENCE §2), with an optional linear
    warm-up (the paper's recipe has none; He et al. warm up ResNet110, and very deep nets on tiny data need it)."""

    epochs: int = 240
    batch_size: int = 64
    eval_batch_size: int = 512
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 2.5e-4
    nesterov: bool = False
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    lr_decay: float = 0.1
    warmup_epochs: int = 0
    drop_last: bool = False


@dataclass
class HardwareConfig:
    """Speed switches; none of them is part of a run's identity. CPU defaults are plain fp32."""

    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    threads: Optional[int] = None
    ddp: bool = False  # DistributedDataParallel; also on whenever torchrun starts several processes
    sync_bn: bool = True  # under DDP: BatchNorm statistics over the global batch (= the single-process run)
    fold_teacher_bn: bool = True  # fold the frozen teacher's eval-mode BN into its convs (same function, faster)


@dataclass
class AnalyzeConfig:
    """task=analyze: the oracle teacher teacher(x*(γ)) over a γ grid (REFERENCE §5, Tables 1-3, Fig. 3-4).

    `batch_size` is the x* batch size: with gamma_reduction=mean each sample moves by γ/B, so it is
    recorded with every row. `representation` is what the silhouette score is computed on (logits,
    softmax, or the 2-D t-SNE embedding of the logits as the released notebook did)."""

    gammas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.5, 1.0, 2.0])
    split: str = "test"
    batch_size: int = 64
    gamma_reduction: str = "mean"
    temperature: float = 1.0
    ece_bins: int = 15
    representation: str = "logits"
    silhouette_samples: int = 2000
    tsne_plots: bool = True
    tsne_samples: int = 2000


@dataclass
class TuneConfig:
    """task=tune: an Optuna study of γ maximising the oracle teacher's silhouette score (or, expensive,
    a short distillation's student accuracy). storage: an Optuna URL (default: SQLite under the store);
    journal: a JournalFileStorage path for shared filesystems (wins over storage when set)."""

    n_trials: int = 20
    gamma_low: float = 0.01
    gamma_high: float = 4.0
    log_scale: bool = True
    objective: str = "silhouette"
    labels: str = "fine"
    representation: str = "logits"
    sampler: str = "tpe"
    storage: Optional[str] = None
    journal: Optional[str] = None
    study_name: Optional[str] = None
    worker: int = 0
    student_epochs: int = 5


@dataclass
class BenchConfig:
    """task=bench: training images/s of the reference loop (per-image torchvision transforms through a
    DataLoader, fp32, Step A by `loss.backward()`) against this runner's step with the `hardware.*`
    switches, for every pair x method (oracle_kd/bench.py).

    pairs: "teacher-student" (as run folders name them; "teacher->student" also accepted). methods: empty =
    every method; a method named by the composed `method=` keeps its `method.*` options, the others run
    with their defaults. dataset: cifar100 | cifar10 read from `dataset.root` when present, else synthetic
    uint8 data of its shape (`synthetic` forces it). Each timing is the median of `repeats` blocks of
    `steps` steps after `warmup` untimed steps. workers: the reference DataLoader's worker processes.
    reference=false times only this runner; flops=false skips the FLOP count and the matmul-rate probe.
    out_dir: where the CSV goes (default <results_dir>/bench). concurrent: run counts k; for each, k processes
    train the first pair x method at once and the aggregate images/s is recorded (oracle_kd/concurrency.py)."""

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


@dataclass
class TablesConfig:
    """task=tables: which accuracy the tables show (best epoch, as the paper, or last epoch) and extra
    folders of run records to read besides the store."""

    metric: str = "best"
    roots: list[str] = field(default_factory=list)


@dataclass
class BaseConfig:
    """Top level. `store` holds run records; `stop_after_epoch` ends a launch early without finishing the
    run (for time-limited jobs: relaunch to resume)."""

    defaults: list[Any] = field(default_factory=list)
    task: str = "train"
    seed: int = 0
    store: str = "runs"
    results_dir: str = "results"
    progress: bool = True
    stop_after_epoch: Optional[int] = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    method: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


@dataclass
class RunConfig:
    """The validated, typed view of one composed config."""

    dataset: DatasetConfig
    teacher: TeacherConfig
    student: StudentConfig
    method: MethodConfig
    train: TrainConfig
    hardware: HardwareConfig
    seed: int = 0
    store: str = "runs"
    results_dir: str = "results"
    progress: bool = True
    stop_after_epoch: Optional[int] = None
    task: str = "train"
    tables: TablesConfig = field(default_factory=TablesConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=BaseConfig)
    for name in available_methods():
        _, cfg_cls = method_entry(name)
        cs.store(group="method", name=f"_{name}_schema", node=cfg_cls)


register_configs()


def group_options(group: str) -> list[str]:
    """The yaml presets available for a config group (what `group=<option>` accepts)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_train_preset(name: str) -> TrainConfig:
    """A `train/` preset as a TrainConfig (used for auto teachers trained with their own recipe)."""
    options = group_options("train")
    if name not in options:
        raise ConfigError(f"teacher.train={name!r} is not a train preset; choose one of: same, {', '.join(options)}")
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(CONF_DIR / "train" / f"{name}.yaml"))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _choice(key: str, value: Any, allowed: list[str] | tuple[str, ...]) -> None:
    _require(value in allowed, key, value, f"is not one of: {', '.join(allowed)}")


def validate_train(t: TrainConfig, prefix: str = "train") -> None:
    _require(t.epochs >= 1, f"{prefix}.epochs", t.epochs, "must be >= 1")
    _require(t.batch_size >= 1, f"{prefix}.batch_size", t.batch_size, "must be >= 1")
    _require(t.eval_batch_size >= 1, f"{prefix}.eval_batch_size", t.eval_batch_size, "must be >= 1")
    _require(t.lr > 0, f"{prefix}.lr", t.lr, "must be > 0")
    _require(0 <= t.momentum < 1, f"{prefix}.momentum", t.momentum, "must be in [0, 1)")
    _require(t.weight_decay >= 0, f"{prefix}.weight_decay", t.weight_decay, "must be >= 0")
    _require(0 < t.lr_decay <= 1, f"{prefix}.lr_decay", t.lr_decay, "must be in (0, 1]")
    _require(t.warmup_epochs >= 0, f"{prefix}.warmup_epochs", t.warmup_epochs, "must be >= 0")
    _require(all(m >= 1 for m in t.milestones), f"{prefix}.milestones", t.milestones, "must be epochs >= 1")


def validate(cfg: DictConfig) -> RunConfig:
    """Check a composed config and return its typed form; raises ConfigError (one line)."""
    from oracle_kd.data import available_datasets
    from oracle_kd.models import available_models

    if cfg.get("method") is None or "name" not in cfg.method:
        raise ConfigError(f"no method selected; add method=<one of: {', '.join(available_methods())}>")
    _choice("method", cfg.method.name, available_methods())
    _, method_cls = method_entry(cfg.method.name)
    try:
        method = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(method_cls), cfg.method))
    except Exception as exc:  # a key of another method, or a bad type
        raise ConfigError(f"method {cfg.method.name!r}: {' '.join(str(exc).split())}") from None
    method.validate()
    method = method.for_teacher(cfg.teacher.arch)

    rc = RunConfig(
        dataset=OmegaConf.to_object(cfg.dataset), teacher=OmegaConf.to_object(cfg.teacher),
        student=OmegaConf.to_object(cfg.student), method=method, train=OmegaConf.to_object(cfg.train),
        hardware=OmegaConf.to_object(cfg.hardware), seed=cfg.seed, store=cfg.store, results_dir=cfg.results_dir,
        progress=cfg.progress, stop_after_epoch=cfg.stop_after_epoch, task=cfg.task,
        tables=OmegaConf.to_object(cfg.tables), analyze=OmegaConf.to_object(cfg.analyze),
        tune=OmegaConf.to_object(cfg.tune), bench=OmegaConf.to_object(cfg.bench),
    )
    _choice("tables.metric", rc.tables.metric, ("best", "last"))
    _choice("task", rc.task, TASKS)
    _choice("dataset.name", rc.dataset.name, available_datasets())
    _require(rc.dataset.crop_pad >= 0, "dataset.crop_pad", rc.dataset.crop_pad, "must be >= 0")
    _require(rc.dataset.workers >= 0, "dataset.workers", rc.dataset.workers, "must be >= 0")
    _choice("student.stem", rc.student.stem, STEMS)
    _choice("teacher.stem", rc.teacher.stem, STEMS)
    _require(0 < rc.dataset.test_fraction < 1, "dataset.test_fraction", rc.dataset.test_fraction, "must be in (0, 1)")
    _choice("student.arch", rc.student.arch, available_models())
    _choice("teacher.arch", rc.teacher.arch, available_models())
    if rc.teacher.train != "same":
        load_train_preset(rc.teacher.train)
    validate_train(rc.train)
    _choice("hardware.device", rc.hardware.device, DEVICES)
    _choice("hardware.precision", rc.hardware.precision, PRECISIONS)
    _require(rc.hardware.threads is None or rc.hardware.threads >= 1, "hardware.threads", rc.hardware.threads,
             "must be >= 1 or null")
    _require(rc.stop_after_epoch is None or rc.stop_after_epoch >= 1, "stop_after_epoch", rc.stop_after_epoch,
             "must be >= 1 or null")
    validate_bench(rc.bench)
    return rc


def parse_pair(pair: str) -> tuple[str, str]:
    """'teacher-student' (or 'teacher->student') -> (teacher, student); architecture names have no '-'."""
    teacher, sep, student = pair.partition("->") if "->" in pair else pair.partition("-")
    _require(bool(sep and teacher and student and "-" not in student), "bench.pairs", pair,
             "must be 'teacher-student', e.g. resnet56-resnet20")
    return teacher.strip(), student.strip()


def validate_bench(b: BenchConfig) -> None:
    from oracle_kd.models import available_models

    _require(len(b.pairs) >= 1, "bench.pairs", b.pairs, "must name at least one teacher-student pair")
    for pair in b.pairs:
        for arch in parse_pair(pair):
            _require(arch in available_models(), "bench.pairs", pair,
                     f"names an unknown model {arch!r}; choose from: {', '.join(available_models())}")
    for m in b.methods:
        _choice("bench.methods", m, available_methods())
    _choice("bench.dataset", b.dataset, BENCH_DATASETS)
    _require(b.batch_size >= 1, "bench.batch_size", b.batch_size, "must be >= 1")
    _require(b.steps >= 1, "bench.steps", b.steps, "must be >= 1")
    _require(b.repeats >= BENCH_MIN_REPEATS, "bench.repeats", b.repeats, f"must be >= {BENCH_MIN_REPEATS} (a median)")
    _require(b.warmup >= 1, "bench.warmup", b.warmup, "must be >= 1 (the first step is never timed)")
    _require(b.workers >= 0, "bench.workers", b.workers, "must be >= 0")
    _require(b.synthetic_images >= 1, "bench.synthetic_images", b.synthetic_images, "must be >= 1")
    for k in b.concurrent:
        _require(k >= 1, "bench.concurrent", b.concurrent, "must list run counts >= 1")
