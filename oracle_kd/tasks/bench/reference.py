"""The reference loop, written as the released Oracle code and mdistiller write it, so that the benchmark
compares this runner with what a user of those would otherwise run.

Data: a `torch.utils.data.Dataset` over uint8 HWC images handing PIL images to torchvision's per-image
`RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(...)`, batched by a
`DataLoader` with worker processes, fp32. Oracle KD's Step A is written out as the released `Refiner` does
it: the input gets `requires_grad`, `CE(teacher(x), y).backward()` fills x.grad *and every teacher
parameter's .grad* (the teacher's parameters require grad and are never zeroed, as there),
x* = x − γ·|x|⊙x.grad, teacher(x*) under no_grad, then the student's CE + Hinton KL (the released
`DistillKL`), backward, SGD. Other methods run our `Distiller.forward_train` in fp32 behind that same
DataLoader (mdistiller's loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from oracle_kd.config import RunConfig
from oracle_kd.data import DataBundle, ImageSet
from oracle_kd.engine.step import make_optimizer
from oracle_kd.methods import MethodConfig, build_distiller, method_entry
from oracle_kd.methods.oracle import OracleConfig
from oracle_kd.tasks.bench.parts import CROP_PAD, EPOCH, IMAGE_SIZE, Batches, Step, bench_batch, bench_split, pair_models


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
    from torchvision import transforms  # lazy: torchvision is slow to import and only this part needs it

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


def reference_batches(loader: torch.utils.data.DataLoader, device: torch.device) -> Batches:
    """The loader's batches on the device, epoch after epoch, as a training loop would fetch them."""
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


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


def _distiller_step(rc: RunConfig, cfg: MethodConfig, t_model: nn.Module, s_model: nn.Module,
                    device: torch.device, classes: int) -> Step:
    """mdistiller's loop: the method's own loss in fp32, behind the reference data path."""
    d = build_distiller(cfg, s_model, t_model if method_entry(cfg.name)[0].needs_teacher else None,
                        data=bench_split(classes)).to(device).train()
    opt = make_optimizer(d.trainable_parameters(), rc.train)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        _, losses = d.forward_train(bench_batch(x, y, d.views), EPOCH)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _oracle_step(rc: RunConfig, cfg: OracleConfig, t_model: nn.Module, s_model: nn.Module) -> Step:
    """The released Oracle loop (utils.train_kd): teacher in eval mode with grad-requiring parameters, so
    Step A pays for every teacher weight gradient as it does there."""
    t_model.eval()
    s_model.train()
    opt = make_optimizer(s_model.parameters(), rc.train)

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


def reference_step(rc: RunConfig, cfg: MethodConfig, teacher_arch: str, student_arch: str, classes: int,
                   device: torch.device) -> Step:
    """One step of the reference loop (fp32, plain NCHW, no compile)."""
    t_model, s_model = pair_models(rc, teacher_arch, student_arch, classes)
    t_model, s_model = t_model.to(device), s_model.to(device)
    if isinstance(cfg, OracleConfig):
        return _oracle_step(rc, cfg, t_model, s_model)
    return _distiller_step(rc, cfg, t_model, s_model, device, classes)
