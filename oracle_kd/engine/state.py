"""A run's train state, its RNG, and last.pt: everything a killed run needs to resume and end with the numbers
of an uninterrupted one."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from oracle_kd.methods import Distiller
from oracle_kd.store.io import atomic_torch_save


@dataclass
class TrainState:
    """Progress and running results of one run, saved with every checkpoint."""

    epoch: int = 0
    best_top1: float = -1.0
    best_top5: float = 0.0
    best_epoch: int = 0
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    train_images: int = 0
    cohort_time_s: float = 0.0  # the cohort's training time over this run's epochs (= train_time_s when solo)

    def record_eval(self, epoch: int, top1: float, top5: float) -> None:
        if top1 > self.best_top1:
            self.best_top1, self.best_top5, self.best_epoch = top1, top5, epoch

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a step may draw from (torch CPU and CUDA, Python, numpy), as tensors and plain values so
    that `torch.load(weights_only=True)` can read it back."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))


@contextlib.contextmanager
def own_rng(holder: Any) -> Iterator[None]:
    """Run with `holder.rng` as the process RNG and keep what the block leaves in it: each run of a cohort draws
    from its own stream, as it would alone, whatever the others draw. `holder.rng` None: the run owns the process
    RNG (a cohort of one), and nothing is swapped."""
    if holder.rng is None:
        yield
        return
    set_rng_state(holder.rng)
    try:
        yield
    finally:
        holder.rng = rng_state()


def save_checkpoint(path: Path, distiller: Distiller, optimizer: torch.optim.Optimizer, state: TrainState,
                    lr: float, rows: list[dict[str, Any]], rng: dict[str, Any]) -> None:
    """last.pt: trainable weights (never the fixed teacher), optimizer, schedule position, the run's RNG, state,
    and the metrics rows so far (the authoritative copy: metrics.jsonl is rebuilt from it on resume)."""
    atomic_torch_save(path, {"model": distiller.trainable_state_dict(), "optimizer": optimizer.state_dict(),
                             "schedule": {"epoch": state.epoch, "lr": lr}, "rng": rng,
                             "state": state.as_dict(), "metrics": rows})


def load_checkpoint(path: Path, distiller: Distiller, optimizer: torch.optim.Optimizer, device: torch.device
                    ) -> tuple[TrainState, list[dict[str, Any]] | None, dict[str, Any]]:
    """Restore the weights and optimizer `save_checkpoint` wrote; return the saved state, the metrics rows (None
    for a checkpoint written before they were kept) and the run's RNG state. Any damage raises (weights_only:
    nothing executes)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    state = TrainState(**ckpt["state"])
    distiller.load_trainable_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return state, ckpt.get("metrics"), ckpt["rng"]
