"""The teacher: its one identity, the run that makes an auto teacher, and loading it for a step.

A teacher is either `auto` (the finished `ce` run of its arch on the same data and seed, identified by
that run's run_id) or a checkpoint file (identified by its content hash, so moving the file does not
change the runs distilled from it). Every consumer (run ids, the oracle-teacher analysis, the γ tuner)
derives what it needs from `teacher_identity`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oracle_kd.config import RunConfig, StudentConfig, load_train_preset
from oracle_kd.core.needs import Artefact, Needs, RunView, run_needs
from oracle_kd.data import DataBundle
from oracle_kd.engine.hardware import prepare_teacher
from oracle_kd.engine.weights import load_weights, read_state_dict
from oracle_kd.errors import ConfigError
from oracle_kd.methods.ce import CEConfig
from oracle_kd.models import build_model, model_options, plain_counterpart
from oracle_kd.store.identity import ID_LENGTH, run_dir, run_id, semantic_config, uses_teacher
from oracle_kd.store.io import file_sha256

needs_teacher = uses_teacher


def teacher_run_config(rc: RunConfig) -> RunConfig:
    """The `ce` run that makes an auto teacher: same dataset, seed and hardware, the teacher's arch. A teacher is
    trained on the whole training split with its recipe's main phase and plain SGD: scarce data
    (`dataset.train_size`) and later phases are the student's conditions, so every train size shares one teacher."""
    train = rc.train if rc.teacher.train == "same" else load_train_preset(rc.teacher.train)
    train = train.for_teacher()
    return dataclasses.replace(rc, student=StudentConfig(arch=rc.teacher.arch, stem=rc.teacher.stem), method=CEConfig(),
                               train=train, dataset=dataclasses.replace(rc.dataset, train_size=0), stop_after_epoch=None)


def teacher_identity(rc: RunConfig) -> dict[str, Any]:
    """What the teacher is: {arch, source: auto, run_id} or {arch, source: file, sha256[, stem]} (an auto
    teacher's run_id already covers its stem)."""
    if rc.teacher.checkpoint == "auto":
        return {"arch": rc.teacher.arch, "source": "auto", "run_id": identify(teacher_run_config(rc))[1]}
    path = Path(rc.teacher.checkpoint)
    if not path.is_file():
        raise ConfigError(f"teacher.checkpoint={rc.teacher.checkpoint!r}: no such file "
                          f"({path.resolve()}); give a checkpoint path or teacher.checkpoint=auto")
    identity = {"arch": rc.teacher.arch, "source": "file", "sha256": file_sha256(path)}
    if rc.teacher.stem != "auto":
        identity["stem"] = rc.teacher.stem
    return identity


def short_teacher_id(identity: dict[str, Any]) -> str:
    """A 12-digit id of the teacher: the auto teacher's run_id, or the start of a file's SHA-256."""
    return identity["run_id"] if identity["source"] == "auto" else identity["sha256"][:ID_LENGTH]


def run_view(rc: RunConfig) -> RunView:
    return RunView(rc.student.arch, rc.teacher.arch if needs_teacher(rc) else None, rc.train)


def needs(rc: RunConfig) -> Needs:
    """The artefacts and phases the run's models and method declared (`core.needs`)."""
    return run_needs(run_view(rc))


def artefact_source_config(rc: RunConfig) -> RunConfig:
    """The run an artefact is computed from: the `ce` run of the plain counterpart of the run's teacher (of the
    student itself for a teacher's own run), on the whole training split, as an auto teacher is trained."""
    arch = rc.teacher.arch if needs_teacher(rc) else rc.student.arch
    source = dataclasses.replace(rc.teacher, arch=plain_counterpart(arch), stem="auto", checkpoint="auto")
    return teacher_run_config(dataclasses.replace(rc, teacher=source))


def artefact_identity(rc: RunConfig, art: Artefact) -> dict[str, Any]:
    """What an artefact of this run is a function of: its source run (by run_id) and its own identity."""
    return {"source": identify(artefact_source_config(rc))[1], **dict(art.identity)}


def identify(rc: RunConfig) -> tuple[dict[str, Any], str, Path]:
    """(semantic config, run_id, run folder) of a run."""
    extras = {art.name: artefact_identity(rc, art) for art in needs(rc).artefacts}
    semantic = semantic_config(rc, teacher_identity(rc) if needs_teacher(rc) else None, extras)
    rid = run_id(semantic)
    return semantic, rid, run_dir(rc.store, rc, rid)


def build_run_model(arch: str, stem: str, data: DataBundle, artefacts: dict[str, Any] | None = None) -> nn.Module:
    """A fresh model of `arch` for `data`; a model with an option named after one of the run's artefacts (a
    model over input groups that another network defined) gets it."""
    extra = {k: v for k, v in (artefacts or {}).items() if k in model_options(arch)}
    return build_model(arch, data.num_classes, data.in_channels, image_size=data.image_size, stem=stem, **extra)


def build_teacher(rc: RunConfig, data: DataBundle, device: torch.device, path: Path, source: str,
                  artefacts: dict[str, Any] | None = None, keep_bn: bool = False) -> nn.Module:
    """The teacher's architecture with the weights of `path`, frozen and prepared for the step (its BN kept
    for a method that reads it)."""
    teacher = build_run_model(rc.teacher.arch, rc.teacher.stem, data, artefacts)
    load_weights(teacher, read_state_dict(path), source=source, arch=rc.teacher.arch)
    return prepare_teacher(teacher, device, rc.hardware, keep_bn=keep_bn)
