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
from oracle_kd.data import DataBundle
from oracle_kd.engine.hardware import prepare_teacher
from oracle_kd.engine.weights import load_weights, read_state_dict
from oracle_kd.errors import ConfigError
from oracle_kd.methods.ce import CEConfig
from oracle_kd.models import build_model, model_options
from oracle_kd.models.mlp import INPUT_SUPERFEATURES
from oracle_kd.models.sfx import GROUPS, PLAIN_OF
from oracle_kd.store.identity import ID_LENGTH, run_dir, run_id, semantic_config, uses_teacher
from oracle_kd.store.io import file_sha256

needs_teacher = uses_teacher


def teacher_run_config(rc: RunConfig) -> RunConfig:
    """The `ce` run that makes an auto teacher: same dataset, seed and hardware, the teacher's arch. A teacher is
    trained on the whole training split with no chimeric phase: scarce data (`dataset.train_size`) and the
    chimeric phase are the student's conditions, so every train size shares one teacher."""
    train = rc.train if rc.teacher.train == "same" else load_train_preset(rc.teacher.train)
    train = dataclasses.replace(train, chimeric_epochs=0, chimeric_size=0, chimeric_lr=0.0, optimizer="sgd")
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


SUPERFEATURE_SAMPLES = 1000  # training samples the input Hessian is averaged over (the released code's N_hess)


def _input_superfeature_archs(rc: RunConfig) -> list[str]:
    archs = [rc.student.arch] + ([rc.teacher.arch] if needs_teacher(rc) else [])
    return [a for a in archs if a in INPUT_SUPERFEATURES]


def needs_superfeatures(rc: RunConfig) -> bool:
    """Whether a run needs an input-superfeature partition: a model over input superfeatures (`sfx4_mlp*`),
    or a chimeric phase (whose samples are assembled from superfeatures of real ones)."""
    return bool(_input_superfeature_archs(rc)) or rc.train.chimeric_epochs > 0


def superfeature_groups(rc: RunConfig) -> int:
    """M: the models' group count (teacher and student must agree), else KED's default for plain models."""
    counts = {INPUT_SUPERFEATURES[a] for a in _input_superfeature_archs(rc)}
    if len(counts) > 1:
        raise ConfigError(f"teacher {rc.teacher.arch} and student {rc.student.arch} have different superfeature "
                          f"counts; pick models with the same M")
    return counts.pop() if counts else GROUPS


def superfeature_source_config(rc: RunConfig) -> RunConfig:
    """The ordinary (black-box) teacher whose input Hessian defines the superfeatures and whose mean prediction
    is the prior: the `ce` run of the plain counterpart of the run's teacher (of the student itself for a
    teacher's own run), on the whole training split."""
    arch = rc.teacher.arch if needs_teacher(rc) else rc.student.arch
    source = dataclasses.replace(rc.teacher, arch=PLAIN_OF.get(arch, arch), stem="auto", checkpoint="auto")
    return teacher_run_config(dataclasses.replace(rc, teacher=source))


def superfeature_identity(rc: RunConfig) -> dict[str, Any]:
    """What the partition and prior are a function of: the source run, M and the Hessian's sample count."""
    return {"source": identify(superfeature_source_config(rc))[1], "groups": superfeature_groups(rc),
            "samples": SUPERFEATURE_SAMPLES}


def identify(rc: RunConfig) -> tuple[dict[str, Any], str, Path]:
    """(semantic config, run_id, run folder) of a run."""
    semantic = semantic_config(rc, teacher_identity(rc) if needs_teacher(rc) else None,
                               superfeature_identity(rc) if needs_superfeatures(rc) else None)
    rid = run_id(semantic)
    return semantic, rid, run_dir(rc.store, rc, rid)


def build_run_model(arch: str, stem: str, data: DataBundle, superfeatures: dict[str, Any] | None) -> nn.Module:
    """A fresh model of `arch` for `data`; a model over input superfeatures gets the run's partition and prior."""
    extra = {"superfeatures": superfeatures} if "superfeatures" in model_options(arch) else {}
    return build_model(arch, data.num_classes, data.in_channels, image_size=data.image_size, stem=stem, **extra)


def build_teacher(rc: RunConfig, data: DataBundle, device: torch.device, path: Path, source: str,
                  superfeatures: dict[str, Any] | None = None) -> nn.Module:
    """The teacher's architecture with the weights of `path`, frozen and prepared for the step."""
    teacher = build_run_model(rc.teacher.arch, rc.teacher.stem, data, superfeatures)
    load_weights(teacher, read_state_dict(path), source=source, arch=rc.teacher.arch)
    return prepare_teacher(teacher, device, rc.hardware)
