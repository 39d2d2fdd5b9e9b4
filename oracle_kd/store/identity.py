"""Run identity: the semantic config of a run, its content hash (the run_id) and its folder.

A run is identified by a hash of its *semantic* config: what changes the numbers it produces (dataset
and augmentation, models, method, recipe, seed, teacher source), never paths, progress bars or hardware
switches. The same semantic config therefore always maps to the same folder, which is what lets a
relaunched sweep skip finished runs and resume unfinished ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from oracle_kd.config import RunConfig
from oracle_kd.methods import method_entry
from oracle_kd.methods.base import WHEN_SET

ID_LENGTH = 12
COMPACT = (",", ":")


def content_hash(obj: Any, length: int = ID_LENGTH, separators: tuple[str, str] | None = COMPACT) -> str:
    """The first `length` hex digits of SHA-256 over `obj` as sorted-key JSON. `separators=None` is
    json's default spacing, which the analysis, study and recipe names were first hashed with."""
    blob = json.dumps(obj, sort_keys=True, separators=separators, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def uses_teacher(rc: RunConfig) -> bool:
    return method_entry(rc.method.name)[0].needs_teacher


def semantic_config(rc: RunConfig, teacher_identity: dict[str, Any] | None,
                    artefacts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of a RunConfig that defines the run. `teacher_identity` is None for methods without a
    teacher, so a `ce` run is the same run whether launched by hand or as an auto teacher. `artefacts` (the
    identity of each artefact the run uses, by name: KED's input superfeatures) enter only for the runs that
    use them."""
    return {**(artefacts or {}),
        "dataset": dataset_identity(rc.dataset),
        "student": rc.student.arch if rc.student.stem == "auto" else dataclasses.asdict(rc.student),
        "teacher": teacher_identity,
        "method": method_identity(rc.method),
        "train": train_identity(rc.train),
        "seed": rc.seed,
    }


def dataset_identity(dataset: Any) -> dict[str, Any]:
    """The dataset options that change the numbers: not where it lives or how it is read. `train_size`, added
    after runs were stored, enters only when set, so every full-data run keeps its run_id."""
    out = dataclasses.asdict(dataset)
    for key in ("root", "workers", "download"):
        out.pop(key)
    if out["name"] != "digits":
        out.pop("test_fraction")
    if not out["train_size"]:
        out.pop("train_size")
    return out


def train_identity(train: Any) -> dict[str, Any]:
    """The recipe; options added later enter only when they are on: the chimeric phase's (chimeric_epochs > 0)
    and the optimizer's (train.optimizer other than sgd)."""
    out = dataclasses.asdict(train)
    if out.get("optimizer", "sgd") == "sgd":
        out.pop("optimizer", None)
        out.pop("dot_delta", None)
    if not out["chimeric_epochs"]:
        for key in ("chimeric_epochs", "chimeric_size", "chimeric_lr"):
            out.pop(key)
    return out


def method_identity(method: Any) -> dict[str, Any]:
    """The method's options as the run_id hashes them. A field's `metadata["identity"]` says how it enters:
    - True (no metadata): always.
    - False: never. The per-pair tables added after runs were already stored; they are resolved into plain
      options before a run, so leaving them out keeps every existing run_id.
    - "when_set": only when its value differs from the field's default. For an option added to a method after
      runs of it were stored (KD's `logit_stand`): every stored run, which ran with the default, keeps its run_id,
      and a run that sets the option is a different run."""
    values = dataclasses.asdict(method)
    out = {}
    for f in dataclasses.fields(method):
        mode = f.metadata.get("identity", True)
        if mode is False or (mode == WHEN_SET and values[f.name] == _default(f)):
            continue
        out[f.name] = values[f.name]
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"method option {f.name!r} is marked identity={WHEN_SET!r} but has no default")


def run_id(semantic: dict[str, Any]) -> str:
    return content_hash(semantic)


def run_dir(store: str | Path, rc: RunConfig, rid: str) -> Path:
    """<store>/<dataset>/<method>/<teacher>-<student>/<run_id>; `none` stands for no teacher."""
    teacher = rc.teacher.arch if uses_teacher(rc) else "none"
    return Path(store) / rc.dataset.name / rc.method.name / f"{teacher}-{rc.student.arch}" / rid
