"""Structured configs (the schema of conf/) and their validation.

Hydra composes `conf/`; every group is backed by a dataclass (the run's groups here, each method's in its
file, each task's section beside the task), so an unknown key or a value of the wrong type fails at
composition, and the dataclass is the one home of every default. `validate` then checks ranges and
names (architectures, datasets, presets, every section's own `validate`), what can be known from the config
before any work (the pairing, `dataset.train_size` against the dataset, the running task's section's
`check(rc)`: task=tune opens its storage) and turns the composed DictConfig into typed objects the rest of
the code uses. Every failure is one line that names the key and the allowed values (a `ConfigError`, or a
`StoreError` for a storage that cannot be opened or written).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import math
import socket
import typing
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.core.teacher_view import PLAIN
from oracle_kd.data import available_datasets, dataset_shape
from oracle_kd.data.subset import train_split_size
from oracle_kd.errors import ConfigError, PairRefused, choice, mask_credentials, reason, require
from oracle_kd.methods import MethodConfig, available_methods, build_distiller, method_entry
from oracle_kd.models import available_models, build_model
from oracle_kd.paths import CONF_DIR

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp64")
STEMS = ("auto", "imagenet", "cifar")
AUTO_RECIPE_PREFIX = "for_"  # conf/train/for_<dataset>.yaml: the recipe used when no train= is given
OPTIMIZERS = ("sgd", "dot")
LOGGERS = ("none", "tensorboard", "wandb", "mlflow")  # each run's rows, config and result (engine/loggers.py)
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # what each needs installed
MLFLOW_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")  # logger_uri
log = logging.getLogger("oracle_kd")


@dataclass
class DatasetConfig:
    """Which data and the train-time augmentation. `root` is where on-disk datasets live (not identity);
    `download` fetches, verifies and extracts CIFAR-10/100 or Tiny-ImageNet into it when missing (not identity).
    `train_size` keeps a stratified subset of the training split (scarce-data runs; data/subset.py); the test
    split is never cut."""

    name: str = "digits"
    root: str = "data"
    crop_pad: int = 4
    flip: bool = True
    test_fraction: float = 0.25  # digits only: the fixed held-out share
    workers: int = 4  # folder datasets (Tiny-ImageNet, ImageNet): DataLoader worker processes
    download: bool = False
    train_size: int = 0  # a stratified subset of this many training samples, drawn by the run seed; 0 = all


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
    """SGD with momentum and a multi-step learning-rate schedule (the paper's recipe), with an optional linear
    warm-up (the paper's recipe has none; He et al. warm up ResNet110, and very deep nets on tiny data need it).
    `chimeric_epochs` > 0: after the main epochs a KED/KD student goes on for that many epochs over
    `chimeric_size` synthetic (chimeric) samples; 0 = no chimeric phase. `optimizer=dot` is the
    Distillation-Oriented Trainer (engine/dot.py): the `ce` term and the distillation terms get their own
    momentum buffers."""

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
    chimeric_epochs: int = 0
    chimeric_size: int = 0
    chimeric_lr: float = 0.0  # the chimeric phase's learning rate; 0 = go on at the schedule's last rate
    optimizer: str = "sgd"  # sgd | dot: DOT's task and distillation momenta are momentum ∓ dot_delta
    dot_delta: float = 0.075  # DOT's δ (0.075 on CIFAR, 0.09 on ImageNet in its reference)

    def for_teacher(self) -> "TrainConfig":
        """The recipe a teacher trains with: the main phase, plain SGD (a chimeric phase and DOT are the
        student's)."""
        return dataclasses.replace(self, chimeric_epochs=0, chimeric_size=0, chimeric_lr=0.0, optimizer="sgd")

    @property
    def total_epochs(self) -> int:
        """The main epochs plus the chimeric phase's: where a run is finished."""
        return self.epochs + self.chimeric_epochs


@dataclass
class HardwareConfig:
    """Speed switches; none of them is part of a run's identity. CPU defaults are plain fp32."""

    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True  # measured on CPU: +27% on the Oracle step
    compile: bool = False
    cudnn_benchmark: bool = False
    threads: Optional[int] = None
    ddp: bool = False  # DistributedDataParallel; also on whenever torchrun starts several processes
    sync_bn: bool = True  # under DDP: BatchNorm statistics over the global batch (= the single-process run)
    fold_teacher_bn: bool = True  # fold the frozen teacher's eval-mode BN into its convs (same function, faster)


@dataclass
class BaseConfig:
    """Top level. `store` holds run records; `stop_after_epoch` ends a launch early without finishing the
    run (for time-limited jobs: relaunch to resume). Each task's own section (`bench`, `tune`, ...) is
    added by `register_section`."""

    defaults: list[Any] = field(default_factory=list)
    task: str = "train"
    seed: int = 0
    store: str = "runs"
    results_dir: str = "results"
    progress: bool = True
    stop_after_epoch: Optional[int] = None
    logger: str = "none"  # none | tensorboard | wandb | mlflow: each run's rows, config and result (engine/loggers.py)
    logger_uri: Optional[str] = None  # logger=mlflow: a tracking URI or a folder (null: <store>/mlruns/)
    logger_project: str = "oracle-kd"  # the W&B project, the MLflow experiment
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    method: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)


@dataclass
class RunConfig:
    """The validated, typed view of one composed config. Task sections are in `sections` and read as
    attributes (`rc.bench`), so a task's options live with the task."""

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
    logger: str = "none"
    logger_uri: Optional[str] = None
    logger_project: str = "oracle-kd"
    task: str = "train"
    sections: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"RunConfig has no field or section {name!r}")

    def with_section(self, name: str, value: Any) -> "RunConfig":
        return dataclasses.replace(self, sections={**self.sections, name: value})

    def as_dict(self) -> dict[str, Any]:
        """Every field and section as plain data (what a run's config.json records)."""
        out = dataclasses.asdict(self)
        out.update(out.pop("sections"))
        return _masked(out)


def _masked(value: Any) -> Any:
    """Plain data with every URL's password replaced by *** (a database URL must not reach a record)."""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return mask_credentials(value) if isinstance(value, str) else value


_SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> None:
    """Declare a top-level config section (a task's options): its schema is `cls`, whose defaults are the
    only defaults, and whose `validate()` (if any) runs on every composed config."""
    _SECTIONS[name] = cls


def sections() -> dict[str, type]:
    return dict(_SECTIONS)


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent): the root with every registered section,
    each method's schema, and one `teacher=`/`student=` option per registered model."""
    from oracle_kd.models import available_models

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=_root_schema())
    for name in available_methods():
        _, cfg_cls = method_entry(name)
        cs.store(group="method", name=f"_{name}_schema", node=cfg_cls)
    for arch in available_models():
        cs.store(group="teacher", name=arch, node={"arch": arch})
        cs.store(group="student", name=arch, node={"arch": arch})


def group_options(group: str) -> list[str]:
    """What `group=<option>` accepts: one option per model for teacher/student, else the yaml presets."""
    if group in ("teacher", "student"):
        return available_models()
    # train/for_<dataset>.yaml are the per-dataset defaults conf/config.yaml picks, not presets to name
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith(AUTO_RECIPE_PREFIX))


def load_train_preset(name: str) -> TrainConfig:
    """A `train/` preset as a TrainConfig (used for auto teachers trained with their own recipe)."""
    options = group_options("train")
    if name not in options:
        raise ConfigError(f"teacher.train={name!r} is not a train preset; choose one of: same, {', '.join(options)}")
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(CONF_DIR / "train" / f"{name}.yaml"))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]



def validate_train(t: TrainConfig, prefix: str = "train") -> None:
    require(t.epochs >= 1, f"{prefix}.epochs", t.epochs, "must be >= 1")
    require(t.batch_size >= 1, f"{prefix}.batch_size", t.batch_size, "must be >= 1")
    require(t.eval_batch_size >= 1, f"{prefix}.eval_batch_size", t.eval_batch_size, "must be >= 1")
    require(t.lr > 0, f"{prefix}.lr", t.lr, "must be > 0")
    require(0 <= t.momentum < 1, f"{prefix}.momentum", t.momentum, "must be in [0, 1)")
    require(t.weight_decay >= 0, f"{prefix}.weight_decay", t.weight_decay, "must be >= 0")
    require(0 < t.lr_decay <= 1, f"{prefix}.lr_decay", t.lr_decay, "must be in (0, 1]")
    require(t.warmup_epochs >= 0, f"{prefix}.warmup_epochs", t.warmup_epochs, "must be >= 0")
    require(all(m >= 1 for m in t.milestones), f"{prefix}.milestones", t.milestones, "must be epochs >= 1")
    require(t.chimeric_epochs >= 0, f"{prefix}.chimeric_epochs", t.chimeric_epochs, "must be >= 0")
    require(t.chimeric_size >= 0, f"{prefix}.chimeric_size", t.chimeric_size, "must be >= 0")
    require(t.chimeric_lr >= 0, f"{prefix}.chimeric_lr", t.chimeric_lr, "must be >= 0 (0 = the schedule's last rate)")
    choice(f"{prefix}.optimizer", t.optimizer, OPTIMIZERS)
    if t.optimizer == "dot":
        require(0 < t.dot_delta and 0 <= t.momentum - t.dot_delta and t.momentum + t.dot_delta < 1,
                f"{prefix}.dot_delta", t.dot_delta, f"must be > 0 with both momenta {prefix}.momentum ∓ dot_delta in [0, 1)")
        require(not t.nesterov, f"{prefix}.nesterov", t.nesterov, "is not supported by train.optimizer=dot")
    require(t.chimeric_epochs == 0 or t.chimeric_size > 0, f"{prefix}.chimeric_size", t.chimeric_size,
            f"must be > 0 when {prefix}.chimeric_epochs={t.chimeric_epochs} (the synthetic samples of the chimeric phase)")


def check_keys(node: DictConfig, cls: type, prefix: str = "") -> None:
    """Every key of `node` must be a field of the dataclass `cls`, recursively. Hydra checks plain overrides,
    but `+key=value` adds keys past the schema, so a typo (`+train.epoch=3`) would otherwise run silently
    with the default."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "defaults"]
    for key in node.keys():
        full = f"{prefix}{key}"
        if key == "hydra" and not prefix:  # Hydra's own node (present in multirun jobs)
            continue
        if key not in names:
            where = prefix.rstrip(".") or "the top level"
            raise ConfigError(f"unknown key {full!r}; {where} accepts: {', '.join(names)}")
        sub = hints[key]
        if dataclasses.is_dataclass(sub) and isinstance(node._get_node(key), DictConfig):
            check_keys(node[key], sub, f"{full}.")


def check_finite(obj: Any, key: str) -> None:
    """No float anywhere in a config may be inf or nan: such a value passes every range check (inf >= 0)
    and yields a run that "finishes" with NaN numbers."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            check_finite(getattr(obj, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(obj, float):
        require(math.isfinite(obj), key, obj, "must be a finite number")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{key}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{key}.{k}")


def _root_schema() -> type:
    """The top-level schema: BaseConfig plus every registered task section."""
    return dataclasses.make_dataclass("RootConfig", [(n, c, field(default_factory=c)) for n, c in _SECTIONS.items()],
                                      bases=(BaseConfig,))


SEED_RANGE = (0, 2**32 - 1)  # what numpy's and torch's seeding both accept


def validate(cfg: DictConfig) -> RunConfig:
    """Check a composed config and return its typed form; raises ConfigError (one line)."""
    if cfg.get("method") is None or "name" not in cfg.method:
        raise ConfigError(f"no method selected; add method=<one of: {', '.join(available_methods())}>")
    choice("method", cfg.method.name, available_methods())
    _, method_cls = method_entry(cfg.method.name)
    check_keys(cfg, _root_schema())
    check_keys(cfg.method, method_cls, "method.")
    try:
        method = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(method_cls), cfg.method))
    except Exception as exc:  # a key of another method, or a bad type
        raise ConfigError(f"method {cfg.method.name!r}: {' '.join(str(exc).split())}") from None
    check_finite(method, "method")
    method.validate()
    method = method.for_pair(cfg.teacher.arch, cfg.student.arch)
    if cfg.dataset.name in available_datasets():
        method, line = method.for_input(dataset_shape(cfg.dataset.name).image_size)
        if line is not None:
            _say_once(line)

    rc = RunConfig(
        dataset=OmegaConf.to_object(cfg.dataset), teacher=OmegaConf.to_object(cfg.teacher),
        student=OmegaConf.to_object(cfg.student), method=method, train=OmegaConf.to_object(cfg.train),
        hardware=OmegaConf.to_object(cfg.hardware), seed=cfg.seed, store=cfg.store, results_dir=cfg.results_dir,
        progress=cfg.progress, stop_after_epoch=cfg.stop_after_epoch, logger=cfg.logger, task=cfg.task,
        logger_uri=cfg.logger_uri, logger_project=cfg.logger_project,
        sections={name: OmegaConf.to_object(cfg[name]) for name in _SECTIONS},
    )
    for name in ("dataset", "teacher", "student", "train", "hardware"):
        check_finite(getattr(rc, name), name)
    for name, section in rc.sections.items():
        check_finite(section, name)
    lo, hi = SEED_RANGE
    require(isinstance(rc.seed, int) and lo <= rc.seed <= hi, "seed", rc.seed, f"must be an integer in [{lo}, {hi}]")
    choice("dataset.name", rc.dataset.name, available_datasets())
    require(rc.dataset.crop_pad >= 0, "dataset.crop_pad", rc.dataset.crop_pad, "must be >= 0")
    require(rc.dataset.workers >= 0, "dataset.workers", rc.dataset.workers, "must be >= 0")
    choice("student.stem", rc.student.stem, STEMS)
    choice("teacher.stem", rc.teacher.stem, STEMS)
    require(0 < rc.dataset.test_fraction < 1, "dataset.test_fraction", rc.dataset.test_fraction, "must be in (0, 1)")
    rc.dataset = check_train_size(rc.dataset)
    choice("student.arch", rc.student.arch, available_models())
    choice("teacher.arch", rc.teacher.arch, available_models())
    if rc.teacher.train != "same":
        load_train_preset(rc.teacher.train)
    validate_train(rc.train)
    if rc.train.optimizer == "dot":
        require(method_entry(rc.method.name)[0].needs_teacher, "train.optimizer", "dot",
                f"steps distillation terms apart from CE; method {rc.method.name} has none")
    if rc.hardware.ddp:
        check_ddp(rc)
    check_logger(rc)
    choice("hardware.device", rc.hardware.device, DEVICES)
    choice("hardware.precision", rc.hardware.precision, PRECISIONS)
    require(rc.hardware.precision != "fp64" or rc.task != "bench", "hardware.precision", rc.hardware.precision,
            "is for equality checks of runs; task=bench measures fp32 or bf16")
    require(rc.hardware.threads is None or rc.hardware.threads >= 1, "hardware.threads", rc.hardware.threads,
             "must be >= 1 or null")
    require(rc.stop_after_epoch is None or rc.stop_after_epoch >= 1, "stop_after_epoch", rc.stop_after_epoch,
             "must be >= 1 or null")
    for section in rc.sections.values():
        if hasattr(section, "validate"):
            section.validate()
    if rc.task in ("train", "plan"):
        check_pairing(rc)
    task_section = rc.sections.get(rc.task)
    if hasattr(task_section, "check"):  # what the running task needs of the whole config (task=tune: its storage)
        task_section.check(rc)
    return rc


def check_logger(rc: RunConfig) -> None:
    """The logger, before anything trains: a known one, its package installed, and for MLflow a tracking URI
    that parses and, for a server, accepts a connection (MLflow's client retries a dead server for minutes)."""
    choice("logger", rc.logger, LOGGERS)
    package = LOGGER_PACKAGES.get(rc.logger)
    require(package is None or importlib.util.find_spec(package) is not None, "logger", rc.logger,
            f"needs the {package} package: pip install oracle-kd[{rc.logger}]")
    require(bool(rc.logger_project), "logger_project", rc.logger_project, "must not be empty")
    if rc.logger == "mlflow" and rc.logger_uri:
        check_tracking_uri(rc.logger_uri)


def tracking_scheme(uri: str) -> str | None:
    """The scheme of an MLflow tracking URI without its driver (`postgresql+psycopg` -> `postgresql`); None for a
    folder (`logger_uri=/shared/mlruns`: a SQLite store made there)."""
    if ":" not in uri and uri != "databricks":
        return None
    return uri.partition(":")[0].partition("+")[0].lower()


def check_tracking_uri(uri: str) -> None:
    scheme = tracking_scheme(uri)
    if scheme is None:
        return
    shown = mask_credentials(uri)
    if scheme not in MLFLOW_SCHEMES:
        raise ConfigError(f"logger_uri={shown!r} is neither a folder nor a tracking URI with a scheme of: "
                          f"{', '.join(MLFLOW_SCHEMES)}")
    if scheme not in ("http", "https"):
        return
    try:
        parts = urlsplit(uri)
        address = (parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
        socket.create_connection(address, timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"logger_uri={shown!r}: no MLflow tracking server answers there ({reason(exc)})") from None


def check_train_size(d: DatasetConfig) -> DatasetConfig:
    """`dataset.train_size` against the dataset, before anything trains: a subset keeps every class, so fewer
    samples than classes is refused; a size at or above the training split is no subset but the whole split, so
    it is normalised to 0 (one line) and the run keeps the run_id of the same data."""
    n = d.train_size
    require(n >= 0, "dataset.train_size", n, "must be >= 0 (0 = the whole training split)")
    if n == 0:
        return d
    classes = dataset_shape(d.name).classes
    require(n >= classes, "dataset.train_size", n, f"is fewer samples than the {classes} classes of {d.name} (a "
            f"stratified subset keeps at least one of each); give at least {classes}, or 0 for the whole split")
    split = train_split_size(d.name, d.test_fraction)
    if split is None or n < split:
        return d
    _say_once(f"dataset.train_size={n} is the whole training split of {d.name} ({split} samples): training on all "
              "of it, as the run without dataset.train_size (the same run_id)")
    return dataclasses.replace(d, train_size=0)


_SAID: set[str] = set()  # lines said once per process, however often a config is validated (launchers, jobs)


def _say_once(line: str) -> None:
    if line not in _SAID:
        _SAID.add(line)
        log.info("%s", line)


def check_ddp(rc: RunConfig) -> None:
    """Refuse, in one line, a run whose method or optimizer has no DDP form. Called by `validate` for
    hardware.ddp=true and by the trainer when torchrun starts several processes without it."""
    require(rc.train.optimizer != "dot", "train.optimizer", "dot", "takes two backward passes per step; it is not "
            "supported under DDP (hardware.ddp=false)")
    require(method_entry(rc.method.name)[0].supports_ddp, "hardware.ddp", True,
            f"is not supported by method {rc.method.name} (its per-run state spans the whole training split)")


_PAIRINGS: dict[str, ConfigError | None] = {}  # key → the problem found (None: none), per process
_MODELS: dict[tuple[str, int, int, int, str], Any] = {}  # freshly built models, copied for each check


def _fresh_model(arch: str, classes: int, channels: int, size: int, stem: str) -> Any:
    """A freshly initialised model for a check (built once per process, copied: a copy is 3-5x cheaper)."""
    key = (arch, classes, channels, size, stem)
    if key not in _MODELS:
        _MODELS[key] = build_model(arch, classes, channels, image_size=size, stem=stem)
    return copy.deepcopy(_MODELS[key])


def check_pairing(rc: RunConfig) -> None:
    """Build the run's method on its teacher and student (fresh weights, on the CPU, a stand-in split of one
    sample per class) and take one training forward on two stand-in images of the dataset's shape. Whatever a
    method's constructor or loss refuses (AT's stage counts, FitNet's hint stage, KED's models, a regressor that
    cannot be built) and what a training phase needs of the method is then one line before anything loads or
    trains, not after an auto teacher has trained. Cached per process by dataset, pair, phase and the method's
    options that can change shapes: float options (weights, temperatures, γ) change numbers, not shapes, so a γ
    grid or a weight sweep is checked once."""
    shaping = {k: v for k, v in dataclasses.asdict(rc.method).items() if not isinstance(v, float)}
    key = json.dumps([rc.dataset.name, dataclasses.asdict(rc.teacher), dataclasses.asdict(rc.student), shaping,
                      rc.train.chimeric_epochs > 0], sort_keys=True, default=str)
    if key not in _PAIRINGS:
        with torch.random.fork_rng(devices=[]):  # the process RNG is the runs', not the check's
            _PAIRINGS[key] = _pairing_problem(rc)
    problem = _PAIRINGS[key]
    if problem is not None:
        raise type(problem)(str(problem))


def _pairing_problem(rc: RunConfig) -> ConfigError | None:
    """What the run's config asks that cannot be (a ConfigError), or what its method refuses of this teacher and
    student (a PairRefused); None when the check step went through."""
    shape, name = dataset_shape(rc.dataset.name), rc.method.name
    cls = method_entry(name)[0]
    size, c, k = shape.image_size, shape.channels, shape.classes
    if rc.train.chimeric_epochs > 0:
        if not shape.in_memory:
            return ConfigError(f"train.chimeric_epochs needs a dataset held in memory (digits, CIFAR), not "
                               f"{rc.dataset.name}")
        if not cls.needs_teacher:
            return ConfigError(f"train.chimeric_epochs: the chimeric samples are labelled by a teacher; "
                               f"method {name} has none")
    if cls.views and not shape.in_memory:
        return ConfigError(f"method {name} reads extra views of each batch, made from a dataset held in "
                           f"memory (digits, CIFAR)")
    torch.manual_seed(0)
    try:
        student = _fresh_model(rc.student.arch, k, c, size, rc.student.stem)
        teacher = _fresh_model(rc.teacher.arch, k, c, size, rc.teacher.stem) if cls.needs_teacher else None
        d = build_distiller(rc.method, student, teacher, data=DataInfo((c, size, size), k, torch.arange(k))).train()
        if rc.train.chimeric_epochs > 0 and d.teacher_input() != PLAIN:
            return ConfigError(f"train.chimeric_epochs: the chimeric samples are labelled by the teacher on the plain "
                               f"input, so the method needs one (kd, ked, ...), not {name}")
        x = torch.randn(2, c, size, size)
        d.forward_train(Batch(x, torch.arange(2) % k, torch.arange(2) % k, views={v: x for v in cls.views}), 1)
    except ConfigError as exc:
        return PairRefused(str(exc))
    except Exception as exc:  # a shape the loss cannot take: the pair is not one this method can distil
        return PairRefused(f"method {name} cannot distil teacher {rc.teacher.arch} into student {rc.student.arch} on "
                           f"{rc.dataset.name}: {reason(exc)}")
    return None
