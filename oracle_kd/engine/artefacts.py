"""The artefacts a run needs (`core.needs.Artefact`), each made once from its finished source run and kept at
`<store>/<dataset>/<name>/<id>/<name>.json`, where the id hashes the artefact's identity (source run, and what
else it is a function of), so every run that shares one reads one file. Parallel runs take the folder's lock:
one computes, the others read."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from oracle_kd.config import RunConfig
from oracle_kd.core.needs import Artefact
from oracle_kd.data import DataBundle, ImageSet, normalize
from oracle_kd.engine.teacher import artefact_identity, artefact_source_config, build_run_model, identify, needs
from oracle_kd.engine.weights import load_weights, read_state_dict
from oracle_kd.errors import ConfigError, StoreError
from oracle_kd.store import record
from oracle_kd.store.identity import content_hash
from oracle_kd.store.io import atomic_write_json, read_json, run_lock

log = logging.getLogger("oracle_kd")


def artefact_path(rc: RunConfig, art: Artefact) -> Path:
    folder = Path(rc.store) / rc.dataset.name / art.name / content_hash(artefact_identity(rc, art))
    return folder / f"{art.name}.json"


def compute(rc: RunConfig, art: Artefact, data: DataBundle, device: torch.device) -> dict[str, Any]:
    """The artefact from its finished source run's model.pt, over the whole training split (held in memory)."""
    src = artefact_source_config(rc)
    _, rid, folder = identify(src)
    if not isinstance(data.train, ImageSet):
        raise ConfigError(f"the {art.name} of this run need a dataset held in memory (digits, CIFAR), not {data.name}")
    model = build_run_model(src.student.arch, src.student.stem, data, None)
    load_weights(model, read_state_dict(folder / record.MODEL), source=f"run {rid}", arch=src.student.arch)
    model = model.to(device).eval()
    images = data.train.images

    def sample(idx: torch.Tensor) -> torch.Tensor:
        return normalize(images[idx].to(device), data.mean, data.std)

    return {"identity": artefact_identity(rc, art), **art.compute(model, sample, len(images), rc.seed)}


def obtain_artefacts(rc: RunConfig, data: DataBundle, device: torch.device) -> dict[str, Any]:
    """Every artefact of the run by name: read from the store, or computed (source run finished first by the
    trainer's prerequisites) and written there, under the folder's lock so that parallel runs compute it once."""
    made = {}
    for art in needs(rc).artefacts:
        path = artefact_path(rc, art)
        with run_lock(path.parent):
            if path.exists():
                try:
                    made[art.name] = read_json(path)
                    continue
                except (OSError, ValueError) as exc:
                    raise StoreError(f"{path} is unreadable ({exc}); delete it to compute it again") from None
            log.info("%s: computing from run %s -> %s", art.name, identify(artefact_source_config(rc))[1], path)
            made[art.name] = compute(rc, art, data, device)
            atomic_write_json(path, made[art.name])
            sizes = made[art.name].get("sizes")
            log.info("%s: made%s", art.name, f" ({len(sizes)} groups of sizes {sizes})" if sizes else "")
    return made
