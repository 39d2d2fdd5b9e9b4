"""Every registered method, configured for a plain teacher-student pair (what the zoo and step tests build),
with the data facts and batch fields a method may read (training labels, sample indices)."""

from __future__ import annotations

import torch

from oracle_kd.core.batch import Batch, DataInfo
from oracle_kd.data.loader import VIEWS
from oracle_kd.methods import method_entry
from oracle_kd.methods.base import MethodConfig

# KED needs superfeature-explaining models; on a plain pair it is the paper's KD+X baseline (FitNet's regressor).
# CRD's 16384 negatives per sample cost more than these one-step checks need.
ON_PLAIN_MODELS = {"ked": {"baseline": True, "feature": "fitnet"}, "crd": {"negatives": 32}}


# Pairs a method refuses by design, said here (not derived from the models) so the refusal itself is tested: OFD
# distils pre-ReLU maps, which MobileNetV2's linear bottlenecks do not have, and takes margins from a BN before
# each teacher stage's ReLU, which a ShuffleNet's concatenated stage outputs do not follow.
REFUSED = {"ofd": lambda t, s: "mobilenetv2" in (t, s) or t.startswith("shufflenet"),
           # ReviewKD fuses and pools spatial maps: the MLPs' features are all 1x1
           "reviewkd": lambda t, s: "mlp" in t or "mlp" in s}


# Methods whose step waits for the host on a GPU by design, said here so the fast-path check skips them by name:
# KDSVD's torch.linalg.svd reads cuSOLVER's convergence flags on the host (and falls back to another driver).
WAITS_FOR_HOST = {"kdsvd": "torch.linalg.svd synchronises the GPU with the host to check convergence"}


def refuses(method: str, teacher: str, student: str) -> bool:
    """Whether `method` refuses this teacher/student pair (a one-line ConfigError when it is built)."""
    return method in REFUSED and REFUSED[method](teacher, student)


def plain_pair_config(method: str) -> MethodConfig:
    """The method's default config, with the options that make it run on plain (non-explaining) models."""
    return method_entry(method)[1](**ON_PLAIN_MODELS.get(method, {}))


def tiny_data(shape: tuple[int, ...], classes: int, train: int = 64) -> DataInfo:
    """A training split of `train` samples, classes in turn: what a method sizes itself by."""
    return DataInfo(tuple(shape), classes, torch.arange(train) % classes)


def batch_of(x: torch.Tensor, y: torch.Tensor, key: int = 0) -> Batch:
    """A batch of the first len(y) training samples (indices 0, 1, ...), as a loader yields it, with every extra
    view a method may read (here the mirrored batch)."""
    return Batch(x, y, torch.arange(len(y), device=x.device), key, {v: x.flip(-1) for v in VIEWS})
