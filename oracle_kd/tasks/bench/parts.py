"""This runner's side of the comparison and the data both sides read: the device-resident uint8 loader
with batched augmentation, and the runner's own `train_step` with the `hardware.*` switches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from oracle_kd.config import RunConfig
from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.data import DataBundle, ImageSet, build_loader, load_dataset
from oracle_kd.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from oracle_kd.engine.hardware import autocast, prepare_model, prepare_teacher
from oracle_kd.engine.state import seed_everything
from oracle_kd.engine.step import make_optimizer, train_step
from oracle_kd.errors import DatasetError
from oracle_kd.methods import MethodConfig, build_distiller, method_entry
from oracle_kd.models import build_model

log = logging.getLogger("oracle_kd")

EPOCH = 1  # the epoch handed to forward_train (DKD's warm-up factor; no other method reads it)
IMAGE_SIZE, CROP_PAD = 32, 4
SHAPES = {"cifar100": (100, CIFAR100_MEAN, CIFAR100_STD), "cifar10": (10, CIFAR10_MEAN, CIFAR10_STD)}

Step = Callable[[torch.Tensor, torch.Tensor], None]
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


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


def our_batches(bundle: DataBundle, rc: RunConfig, device: torch.device) -> Batches:
    """The runner's training batches, epoch after epoch, so a part never runs dry mid-block."""
    loader = build_loader(bundle, "train", batch_size=rc.bench.batch_size, seed=rc.seed, device=device,
                          channels_last=rc.hardware.channels_last, pad=CROP_PAD, flip=True, drop_last=True)
    epoch = 0
    while True:
        epoch += 1
        yield from loader.epoch(epoch)


def method_config(rc: RunConfig, name: str, teacher_arch: str) -> MethodConfig:
    """The composed `method.*` for the method it names, every other method's defaults."""
    cfg = rc.method if rc.method.name == name else method_entry(name)[1]()
    return cfg.for_teacher(teacher_arch)


def pair_models(rc: RunConfig, teacher: str, student: str, classes: int) -> tuple[nn.Module, nn.Module]:
    """(teacher, student), freshly built after seeding, so that both parts start from the same weights."""
    seed_everything(rc.seed)
    return (build_model(teacher, classes, 3, image_size=IMAGE_SIZE),
            build_model(student, classes, 3, image_size=IMAGE_SIZE))


BENCH_SPLIT = 50_000  # the training split a method sizes its state by (CRD's bank): CIFAR's


def bench_split(classes: int, size: int = IMAGE_SIZE, channels: int = 3) -> DataInfo:
    """A CIFAR-sized training split for the methods that size state by it."""
    return DataInfo((channels, size, size), classes, torch.arange(BENCH_SPLIT) % classes)


def bench_batch(x: torch.Tensor, y: torch.Tensor, views: tuple[str, ...] = ()) -> Batch:
    """A batch record for a timed step: sample indices 0..B-1, and the batch itself as each extra view the
    method reads (the bench times the step; making a view is the loader's work, measured apart)."""
    return Batch(x, y, torch.arange(len(y), device=x.device), 0, {v: x for v in views})


def our_step(rc: RunConfig, cfg: MethodConfig, teacher_arch: str, student_arch: str, classes: int,
             device: torch.device) -> Step:
    """The runner's step: prepare_model (channels_last, compile), the method's Distiller, train_step under
    the configured autocast."""
    t_model, s_model = pair_models(rc, teacher_arch, student_arch, classes)
    cls = method_entry(cfg.name)[0]
    student = prepare_model(s_model, device, rc.hardware)
    teacher = prepare_teacher(t_model, device, rc.hardware, keep_bn=cls.teacher_bn) if cls.needs_teacher else None
    d = build_distiller(cfg, student, teacher, data=bench_split(classes)).to(device).train()
    opt = make_optimizer(d.trainable_parameters(), rc.train)
    amp = autocast(device, rc.hardware.precision)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(d.forward_train, opt, bench_batch(x, y, d.views), EPOCH, amp)

    return step
