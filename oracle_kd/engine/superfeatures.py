"""Input superfeatures for KED's MLP version: the partition of the input features and the class prior, made
once per ordinary teacher and kept in the store; and the chimeric samples assembled from them.

The partition comes from the ordinary teacher's input Hessian of Σ_c log p_c, averaged over up to 1000
training samples: W = |H| + |H|ᵀ is the graph of feature interactions, and Louvain communities of W (the
resolution moved until there are exactly M) are the superfeatures. The prior π is the teacher's mean
prediction over the training split. Both are written to `<store>/<dataset>/superfeatures/<id>/`, where the
id hashes `superfeature_identity` (source run, M, samples), so every run that shares them reads one file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from oracle_kd.config import RunConfig
from oracle_kd.core.superfeatures import affinity, chimeric_indices, chimeric_samples, louvain_search, relu_input_hessian
from oracle_kd.data import DataBundle, ImageSet, normalize
from oracle_kd.engine.teacher import build_run_model, identify, superfeature_identity, superfeature_source_config
from oracle_kd.engine.weights import load_weights, read_state_dict
from oracle_kd.errors import ConfigError, StoreError
from oracle_kd.store import record
from oracle_kd.store.identity import content_hash
from oracle_kd.store.io import atomic_write_json, read_json, run_lock

log = logging.getLogger("oracle_kd")
FILE = "superfeatures.json"


def superfeature_folder(rc: RunConfig) -> Path:
    return Path(rc.store) / rc.dataset.name / "superfeatures" / content_hash(superfeature_identity(rc))


@torch.no_grad()
def _mean_prediction(model: torch.nn.Module, images: torch.Tensor, data: DataBundle, device: torch.device,
                     batch: int = 512) -> torch.Tensor:
    total = torch.zeros(data.num_classes, dtype=torch.float64, device=device)
    for lo in range(0, len(images), batch):
        x = normalize(images[lo:lo + batch].to(device), data.mean, data.std)
        total += torch.softmax(model(x)[0].double(), dim=1).sum(dim=0)
    return total / len(images)


def compute_superfeatures(rc: RunConfig, data: DataBundle, device: torch.device) -> dict[str, Any]:
    """Partition and log-prior from the finished source run's model (see the module docstring)."""
    identity = superfeature_identity(rc)
    src = superfeature_source_config(rc)
    _, rid, folder = identify(src)
    if not isinstance(data.train, ImageSet):
        raise ConfigError(f"input superfeatures need a dataset held in memory (digits, CIFAR), not {data.name}")
    model = build_run_model(src.student.arch, src.student.stem, data, None)
    load_weights(model, read_state_dict(folder / record.MODEL), source=f"run {rid}", arch=src.student.arch)
    model = model.to(device).eval()
    images = data.train.images
    g = torch.Generator().manual_seed(rc.seed)
    idx = torch.randperm(len(images), generator=g)[: identity["samples"]]
    x = normalize(images[idx].to(device), data.mean, data.std)
    shape = tuple(x.shape[1:])
    h = relu_input_hessian(lambda v: model(v.view(-1, *shape))[0], x.flatten(1))
    partition, resolution = louvain_search(affinity(h.cpu().double()), identity["groups"])
    log_prior = _mean_prediction(model, images, data, device).log().float().cpu().tolist()
    return {"identity": identity, "partition": partition, "log_prior": log_prior, "resolution": resolution,
            "sizes": [len(p) for p in partition]}


def obtain_superfeatures(rc: RunConfig, data: DataBundle, device: torch.device) -> dict[str, Any]:
    """The run's partition and prior: read from the store, or computed from the (finished) source run and
    written there first, under the folder's lock so that parallel runs compute it once."""
    folder = superfeature_folder(rc)
    path = folder / FILE
    with run_lock(folder):
        if path.exists():
            try:
                return read_json(path)
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path} is unreadable ({exc}); delete it to compute it again") from None
        log.info("input superfeatures: Louvain partition of the ordinary teacher's input Hessian -> %s", path)
        made = compute_superfeatures(rc, data, device)
        atomic_write_json(path, made)
        log.info("input superfeatures: %d groups of sizes %s (resolution %.2f)", len(made["partition"]),
                 made["sizes"], made["resolution"])
        return made


def chimeric_set(train: ImageSet, partition: list[list[int]], size: int, seed: int) -> ImageSet:
    """`size` chimeric images: superfeature i of each taken from a random real sample a_i (distinct donor tuples,
    drawn by the run seed), labels left 0 — the teacher labels them during training."""
    g = torch.Generator().manual_seed(seed)
    donors = chimeric_indices(len(train), len(partition), size, g)
    images = chimeric_samples(train.images.flatten(1), partition, donors).view(size, *train.images.shape[1:])
    return ImageSet(images.contiguous(), torch.zeros(size, dtype=torch.long))
