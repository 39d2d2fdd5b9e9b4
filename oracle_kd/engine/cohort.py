"""Which runs may train together as one cohort, and grouping a sweep's runs into cohorts.

Runs share a batch stream when they agree on everything that fixes it (the dataset config with its
augmentation and split, the seed, the batch size and drop_last, the hardware switches that shape the
tensors, the store); they share a teacher when they agree on its identity. Members may differ in method
and options, student, and recipe (lr, schedule, epochs, weight decay, eval batch): each keeps its own
optimizer and schedule and leaves after its last epoch. Teacher-less (`ce`) runs need only the stream.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from oracle_kd.config import RunConfig
from oracle_kd.engine.teacher import artefact_identity, needs, needs_teacher, teacher_identity
from oracle_kd.methods import method_entry
from oracle_kd.store.identity import content_hash


def stream_key(rc: RunConfig) -> str:
    """What fixes the batches a run sees (and the device they are on); `dataset.download` does not. The run's
    artefacts and what its later phases add (`core.needs`) are part of it where a run has them."""
    dataset = {k: v for k, v in dataclasses.asdict(rc.dataset).items() if k != "download"}
    key: dict[str, Any] = {"dataset": dataset, "seed": rc.seed, "batch_size": rc.train.batch_size,
                           "drop_last": rc.train.drop_last, "hardware": dataclasses.asdict(rc.hardware),
                           "store": rc.store}
    views = method_entry(rc.method.name)[0].views
    if views:
        key["views"] = list(views)
    run_needs = needs(rc)
    for art in run_needs.artefacts:
        key[art.name] = artefact_identity(rc, art)
    for phase in run_needs.phases:
        key.update(phase.stream)
    return content_hash(key)


def teacher_key(rc: RunConfig) -> str | None:
    """The teacher's identity (None without a teacher)."""
    return json.dumps(teacher_identity(rc), sort_keys=True) if needs_teacher(rc) else None


def group_cohorts(rcs: list[RunConfig], max_members: int | None = None) -> list[list[int]]:
    """Indices of `rcs` grouped into cohorts, in first-appearance order: one per (stream, teacher); a
    teacher-less run joins the first cohort on its stream. Cohorts above `max_members` are split."""
    keys: dict[tuple[str, str | None], list[int]] = {}
    loose: list[tuple[str, int]] = []
    for i, rc in enumerate(rcs):
        t = teacher_key(rc)
        if t is None:
            loose.append((stream_key(rc), i))
        else:
            keys.setdefault((stream_key(rc), t), []).append(i)
    for s, i in loose:
        home = next((k for k in keys if k[0] == s), (s, None))
        keys.setdefault(home, []).append(i)
    groups = [sorted(g) for g in keys.values()]
    if max_members:
        groups = [g[k:k + max_members] for g in groups for k in range(0, len(g), max_members)]
    return sorted(groups, key=lambda g: g[0])


def check_cohort(rcs: list[RunConfig]) -> None:
    """Raise ValueError unless the runs can train as one cohort."""
    if len(rcs) > 1 and len(group_cohorts(rcs)) != 1:
        raise ValueError(f"these {len(rcs)} runs do not share one batch stream and teacher: "
                         f"{[(r.method.name, r.student.arch, r.seed) for r in rcs]}")


def describe(rcs: list[RunConfig]) -> dict[str, Any]:
    """A cohort in words, for plans and logs."""
    rc = next((r for r in rcs if needs_teacher(r)), rcs[0])
    return {"size": len(rcs), "dataset": rc.dataset.name, "seed": rc.seed, "batch_size": rc.train.batch_size,
            "teacher": rc.teacher.arch if needs_teacher(rc) else None}
