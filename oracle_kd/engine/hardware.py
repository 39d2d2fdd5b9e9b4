"""Device, precision and model preparation: the `hardware.*` switches, none of which is part of a run's
identity (they change speed, not the function being computed, up to float rounding)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from oracle_kd.config import HardwareConfig
from oracle_kd.errors import ConfigError
from oracle_kd.models.fold import fold_batchnorm


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("hardware.device=cuda but no CUDA device is visible; use hardware=cpu or hardware.device=auto")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the networks when asked; losses cast their inputs to fp32 themselves."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def param_dtype(precision: str) -> torch.dtype:
    """The dtype of parameters and batches: float64 for `fp64` (a check that two layouts or process counts
    compute the same function, to ~1e-15 instead of float32's ~1e-7; several times slower), else float32
    (bf16 is autocast over float32 weights)."""
    return torch.float64 if precision == "fp64" else torch.float32


def in_run_dtype(module: nn.Module, precision: str) -> nn.Module:
    """`module` in float64 for an fp64 run; untouched otherwise (no cast at all, so fp32 runs are unchanged)."""
    return module.to(torch.float64) if precision == "fp64" else module


def apply_hardware(hw: HardwareConfig, device_name: str | None = None) -> torch.device:
    """Threads and cuDNN settings; the device (`device_name` overrides hardware.device: a DDP rank's GPU)."""
    device = resolve_device(device_name or hw.device)
    if hw.threads:
        torch.set_num_threads(hw.threads)
    torch.backends.cudnn.benchmark = hw.cudnn_benchmark
    return device


def prepare_model(model: nn.Module, device: torch.device, hw: HardwareConfig) -> nn.Module:
    model = in_run_dtype(model.to(device), hw.precision)
    if hw.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hw.compile:
        model.compile()
    return model


def prepare_teacher(model: nn.Module, device: torch.device, hw: HardwareConfig, keep_bn: bool = False) -> nn.Module:
    """A frozen teacher for the step: eval mode, BN folded into its convs (`hardware.fold_teacher_bn`, unless
    `keep_bn`: for a method that reads the BN layers), then the same device/layout/compile treatment as the
    student."""
    model.eval()
    if hw.fold_teacher_bn and not keep_bn:
        fold_batchnorm(model)
    return prepare_model(model, device, hw)
