"""Several GPUs of one node: DistributedDataParallel under torchrun (or a SLURM/submitit task array).

A DDP run is defined to equal the single-process run with the same *global* batch (`train.batch_size`):
every rank sees its contiguous part of each global batch (`data.loader.Batching`), losses are scaled so
DDP's gradient average is the global-batch mean even for an uneven last batch, BatchNorm statistics are
taken over the global batch (`hardware.sync_bn`), and Oracle's Step A divides by the global batch size.
Only rank 0 touches the run folder; the other ranks compute and wait.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from oracle_kd.core.precision import at_least_fp32
from oracle_kd.errors import ConfigError

log = logging.getLogger("oracle_kd")
_SLURM_PORT_BASE = 29500


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank among world_size processes, local_rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size


def env_from_slurm(environ: dict[str, str]) -> dict[str, str]:
    """torchrun's variables derived from a SLURM task (what submitit's `tasks_per_node` starts).

    One node only (the issue's scope): the rendezvous is on 127.0.0.1 at a port derived from the job id,
    so two jobs on one node do not collide."""
    if int(environ.get("SLURM_NNODES", "1")) > 1:
        raise ConfigError("hardware.ddp under SLURM supports one node (SLURM_NNODES > 1 given); "
                          "use nodes=1 with tasks_per_node = GPUs per node")
    job = int(environ.get("SLURM_JOB_ID", "0"))
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ["SLURM_NTASKS"],
            "LOCAL_RANK": environ.get("SLURM_LOCALID", environ["SLURM_PROCID"]),
            "MASTER_ADDR": environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": environ.get("MASTER_PORT", str(_SLURM_PORT_BASE + job % 20000))}


def setup(ddp: bool, device_name: str) -> tuple[DistEnv, str]:
    """Join (once per process) the process group torchrun or SLURM describes; return (env, device name).

    DDP is on when torchrun started several processes (WORLD_SIZE > 1), or `hardware.ddp=true` under a
    SLURM task array. `hardware.ddp=true` with a single process is an error, not a silent 1-GPU run.
    The device becomes cuda:<local_rank> for CUDA; gloo serves CPU runs (tests), NCCL CUDA ones.
    """
    if "WORLD_SIZE" not in os.environ and ddp and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        os.environ.update(env_from_slurm(dict(os.environ)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if ddp:
            raise ConfigError("hardware.ddp=true needs several processes: launch with `torchrun "
                              "--nproc_per_node=<GPUs> run.py ...` (or submitit with tasks_per_node=<GPUs>)")
        return DistEnv(), device_name
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
        device_name = f"cuda:{env.local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        if not env.is_main:  # one voice: ranks > 0 report only warnings and errors
            log.setLevel(logging.WARNING)
    return env, device_name


def barrier(env: DistEnv) -> None:
    if env.active:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks, in place; a no-op for a single process."""
    if env.active:
        dist.all_reduce(t)
    return t


# ----------------------------------------------------------------------------- BatchNorm
class _SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x; the gradient of a sum of per-rank losses through y is the sum of their gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = grad.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, on any device (torch's
    SyncBatchNorm is CUDA-only; this one also runs on gloo/CPU, which is how DDP is tested).

    Two differentiable all-reduces (the mean, then the centred sum of squares) keep the statistics as
    exact as a single process's two-pass ones; their backward sums the gradients of every rank, which
    DDP's average then turns into the gradient of the global-batch loss.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = at_least_fp32(x)
        local = torch.cat([xf.sum(dim=(0, 2, 3)), xf.new_full((1,), x.numel() / c)])
        total = _SumOverRanks.apply(local)
        count = total[c]
        mean = total[:c] / count
        centred = xf - mean.view(1, c, 1, 1)
        var = _SumOverRanks.apply(centred.pow(2).sum(dim=(0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm in `module`: torch's fused SyncBatchNorm on CUDA, GlobalBatchNorm2d
    elsewhere. Parameters and buffers are kept (same objects), so state_dicts are unchanged."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for child in module.children():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = GlobalBatchNorm2d  # same attributes and state; only forward differs
        else:
            sync_batchnorm(child, device)
    return module


class _TrainStep(nn.Module):
    """DDP wraps a module's forward; this one's forward is the distiller's training step."""

    def __init__(self, distiller: nn.Module) -> None:
        super().__init__()
        self.distiller = distiller

    def forward(self, batch: Any, epoch: int, teacher_out: Any = None):
        return self.distiller.forward_train(batch, epoch, teacher_out)


def wrap_for_training(distiller: nn.Module, env: DistEnv, device: torch.device, *, sync_bn: bool):
    """The callable the runner steps through: the distiller's own forward_train for one process, a
    DistributedDataParallel step (gradients averaged over ranks) under DDP. The frozen teacher has no
    gradients, so DDP ignores its parameters; its eval-mode BatchNorm needs no syncing."""
    if not env.active:
        return distiller.forward_train
    if sync_bn:
        for name, child in distiller.named_children():
            if name != "teacher":
                setattr(distiller, name, sync_batchnorm(child, device))
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(_TrainStep(distiller), device_ids=[device.index] if device.type == "cuda" else None,
                                  broadcast_buffers=False)
    return ddp
