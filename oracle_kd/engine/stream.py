"""What the runs of a cohort share: the device, the data and its batch stream, and the frozen teacher, whose
outputs are computed here once per batch for every run that asks the same. The runs a stream needs first
(an auto teacher, the source of an artefact) are finished before it opens (`trainer.prerequisites`)."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oracle_kd.config import RunConfig
from oracle_kd.core.batch import DataInfo
from oracle_kd.core.teacher_view import TeacherInput, TeacherOut, teacher_outputs
from oracle_kd.data import BatchLoader, DataBundle, FolderLoader, ImageSet, build_loader, load_dataset, train_subset
from oracle_kd.engine import distributed
from oracle_kd.engine.artefacts import obtain_artefacts
from oracle_kd.engine.hardware import apply_hardware, autocast, param_dtype
from oracle_kd.engine.step import evaluate
from oracle_kd.engine.teacher import build_teacher, identify, needs, needs_teacher, teacher_run_config
from oracle_kd.errors import ConfigError, StoreError
from oracle_kd.methods import method_entry
from oracle_kd.store import record, run_folder
from oracle_kd.store.io import file_sha256

Loader = BatchLoader | FolderLoader


def load_teacher(rc: RunConfig, data: DataBundle, device: torch.device, artefacts: dict[str, Any] | None = None,
                 keep_bn: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher: a finished auto-teacher run's model.pt from the store, or a checkpoint file."""
    tresult = None
    if rc.teacher.checkpoint == "auto":
        _, trid, tdir = identify(teacher_run_config(rc))
        tresult, problem = run_folder.finished_record(tdir)  # its files verified: no student trains from a bad one
        if tresult is None:
            raise StoreError(f"the auto teacher run {trid} is {'damaged: ' + problem if problem else 'not finished'}; "
                             f"launch it first (a launch rebuilds a damaged run from its last.pt)")
        path, source = tdir / record.MODEL, f"run {trid}"
    else:
        path, source = Path(rc.teacher.checkpoint), rc.teacher.checkpoint
    teacher = build_teacher(rc, data, device, path, source, artefacts, keep_bn=keep_bn)
    info = {"arch": rc.teacher.arch, "source": source, "sha256": file_sha256(path),
            "train_best_top1": tresult["best_top1"] if tresult else None}
    return teacher, info


@dataclass
class Stream:
    """The device, the data and its batches, and the frozen teacher: what every run of a cohort reads
    but none owns. Teacher outputs are computed here, once per batch for all runs that ask the same."""

    env: distributed.DistEnv
    device: torch.device
    amp: contextlib.AbstractContextManager
    data: DataBundle
    teacher: nn.Module | None = None
    teacher_info: dict[str, Any] | None = None
    teacher_with_bn: nn.Module | None = None  # for methods that read its BN layers (`Distiller.teacher_bn`)
    train_loader: Loader | None = None
    loader_kw: dict[str, Any] = field(default_factory=dict)
    test_loaders: dict[int, Loader] = field(default_factory=dict)
    artefacts: dict[str, Any] = field(default_factory=dict)  # by name: what the runs' models and phases read
    phase_loaders: dict[str, Loader] = field(default_factory=dict)  # later phases' samples, labelled per batch

    @classmethod
    def open(cls, rc: RunConfig, env: distributed.DistEnv, device_name: str) -> "Stream":
        device = apply_hardware(rc.hardware, device_name)
        full = load_dataset(rc.dataset.name, rc.dataset.root, test_fraction=rc.dataset.test_fraction,
                            download=rc.dataset.download)
        data = train_subset(full, rc.dataset.train_size, rc.seed)
        stream = cls(env, device, autocast(device, rc.hardware.precision), data)
        stream.artefacts = obtain_artefacts(rc, full, device)  # from runs finished first (`prerequisites`)
        if needs_teacher(rc):
            stream.teacher, stream.teacher_info = load_teacher(rc, data, device, stream.artefacts)
        return stream

    def teacher_for(self, rc: RunConfig) -> nn.Module | None:
        """The frozen teacher a run's method reads: the shared one, or, for a method that reads the teacher's BN
        layers, the same weights with their BNs not folded (loaded once per stream)."""
        if not needs_teacher(rc):
            return None
        if not (method_entry(rc.method.name)[0].teacher_bn and rc.hardware.fold_teacher_bn):
            return self.teacher
        if self.teacher_with_bn is None:
            self.teacher_with_bn = load_teacher(rc, self.data, self.device, self.artefacts, keep_bn=True)[0]
        return self.teacher_with_bn

    def open_loaders(self, rc: RunConfig) -> None:
        """The batch stream: a pure function of (seed, epoch), sharded per DDP rank."""
        self.loader_kw = dict(seed=rc.seed, device=self.device, channels_last=rc.hardware.channels_last,
                              workers=rc.dataset.workers, shard=self.env.shard,
                              dtype=param_dtype(rc.hardware.precision))
        t = rc.train
        self.train_loader = build_loader(self.data, "train", batch_size=t.batch_size, pad=rc.dataset.crop_pad,
                                         flip=rc.dataset.flip, drop_last=t.drop_last,
                                         views=method_entry(rc.method.name)[0].views, **self.loader_kw)
        for phase in needs(rc).phases:  # made from the training images, labelled by the teacher as they train
            if not isinstance(self.data.train, ImageSet):
                raise ConfigError(f"the {phase.name} phase needs a dataset held in memory (digits, CIFAR), "
                                  f"not {rc.dataset.name}")
            images = phase.make(self.data.train.images, self.artefacts, rc.seed)
            made = ImageSet(images, torch.zeros(len(images), dtype=torch.long))
            self.phase_loaders[phase.name] = build_loader(dataclasses.replace(self.data, train=made), "train",
                                                          batch_size=t.batch_size, drop_last=t.drop_last,
                                                          **self.loader_kw)

    def data_info(self) -> DataInfo:
        """What a method may size itself by (every split keeps its labels in memory, folder sets too)."""
        d = self.data
        return DataInfo((d.in_channels, d.image_size, d.image_size), d.num_classes, d.train.labels)

    def loader(self, phase: str | None = None) -> Loader:
        """The main phase's batches, or a later phase's."""
        loader = self.phase_loaders[phase] if phase is not None else self.train_loader
        assert loader is not None, "open_loaders first"
        return loader

    def test_loader(self, batch_size: int) -> Loader:
        """The in-order test split at a run's eval batch size (one loader per distinct size)."""
        if batch_size not in self.test_loaders:
            self.test_loaders[batch_size] = build_loader(self.data, "test", batch_size=batch_size, **self.loader_kw)
        return self.test_loaders[batch_size]

    def teacher_report(self, eval_batch_size: int) -> dict[str, Any] | None:
        """The teacher's record for a run: where it came from and its test accuracy (at the run's eval batch)."""
        if self.teacher is None or self.teacher_info is None:
            return None
        key = f"test@{eval_batch_size}"
        if key not in self.teacher_info:
            self.teacher_info[key] = evaluate(self.teacher, self.test_loader(eval_batch_size), self.amp, self.env)
        info = {k: v for k, v in self.teacher_info.items() if not k.startswith("test@")}
        return {**info, "test": self.teacher_info[key]}

    def teacher_outputs(self, inputs: list[TeacherInput], x: torch.Tensor, y: torch.Tensor,
                        mean_over: int | None) -> dict[TeacherInput, TeacherOut]:
        if not inputs or self.teacher is None:
            return {}
        with self.amp:
            return teacher_outputs(self.teacher, inputs, x, y, mean_over=mean_over)


__all__ = ["Loader", "Stream", "load_teacher"]
