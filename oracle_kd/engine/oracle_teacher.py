"""The oracle teacher on a whole split: teacher(x*(γ)) batch by batch, for the analysis and the γ tuner.

x* is computed per batch (Step A, `oracle_kd.core.reinforce`), so with gamma_reduction=mean the batch
size is part of γ's meaning; callers record it."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import nn

from oracle_kd.config import RunConfig
from oracle_kd.core.reinforce import reinforce
from oracle_kd.data import BatchLoader, load_dataset
from oracle_kd.engine.hardware import apply_hardware, autocast, param_dtype
from oracle_kd.engine.teacher import short_teacher_id, teacher_identity
from oracle_kd.engine.trainer import obtain_teacher
from oracle_kd.errors import ConfigError
from oracle_kd.methods import freeze


def oracle_logits(teacher: nn.Module, loader: Any, *, gamma: float, reduction: str,
                  amp: Any = None) -> torch.Tensor:
    """teacher(x*(γ)) for every batch of an in-order loader, as one float32 CPU tensor (N, K)."""
    outs = []
    for x, y in loader.epoch(0):
        with amp or contextlib.nullcontext():
            x_star = reinforce(teacher, x, y, gamma=gamma, reduction=reduction)
            with torch.no_grad():
                logits, _ = teacher(x_star)
        outs.append(logits.float().cpu())
    return torch.cat(outs)


@dataclasses.dataclass
class OracleSetup:
    """Everything needed to evaluate teacher(x*(γ)) on one split; built once per process.

    `identity` is the teacher's short form {arch, source, id} that analysis ids and study names hash."""

    teacher: nn.Module
    teacher_info: dict[str, Any]
    identity: dict[str, Any]
    loader: Any
    labels: torch.Tensor
    coarse: torch.Tensor | None
    amp: Any
    device: torch.device

    def logits(self, gamma: float, reduction: str) -> torch.Tensor:
        return oracle_logits(self.teacher, self.loader, gamma=gamma, reduction=reduction, amp=self.amp)


def short_identity(rc: RunConfig) -> dict[str, Any]:
    """{arch, source, id}: the teacher's identity as the analysis and tuner key their folders and studies."""
    identity = teacher_identity(rc)
    return {"arch": identity["arch"], "source": identity["source"], "id": short_teacher_id(identity)}


def setup_oracle(rc: RunConfig, split_name: str, batch_size: int) -> OracleSetup:
    """Load the data and the (frozen, eval-mode) teacher, training an auto teacher first if missing."""
    identity = short_identity(rc)
    device = apply_hardware(rc.hardware)
    data = load_dataset(rc.dataset.name, rc.dataset.root, test_fraction=rc.dataset.test_fraction,
                        download=rc.dataset.download)
    if data.kind != "memory":
        raise ConfigError(f"task=analyze reads in-memory datasets (digits, cifar10, cifar100); "
                          f"{rc.dataset.name} is not supported yet")
    teacher, info = obtain_teacher(rc, data, device)
    freeze(teacher)
    split = data.train if split_name == "train" else data.test
    loader = BatchLoader(split, batch_size=batch_size, train=False, mean=data.mean, std=data.std,
                         device=device, channels_last=rc.hardware.channels_last,
                         dtype=param_dtype(rc.hardware.precision))
    return OracleSetup(teacher=teacher, teacher_info=info, identity=identity, loader=loader, labels=split.labels,
                       coarse=split.coarse_labels, amp=autocast(device, rc.hardware.precision), device=device)
