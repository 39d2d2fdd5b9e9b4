"""task=train (one run: trained, resumed or skipped) and task=plan (what a launch would train; a dry run)."""

from __future__ import annotations

from typing import Any

from oracle_kd.config import RunConfig
from oracle_kd.engine.teacher import needs_teacher, teacher_run_config
from oracle_kd.engine.trainer import run, run_status
from oracle_kd.tasks.registry import register_task


@register_task("train", "train one run (finished runs are skipped, unfinished ones resume)")
def train(rc: RunConfig) -> dict[str, Any]:
    return run(rc)


@register_task("plan", "dry run: print what a launch (e.g. a whole sweep) would train, train nothing")
def plan(rc: RunConfig) -> dict[str, Any]:
    st = run_status(rc)
    teacher = ""
    if needs_teacher(rc):
        if rc.teacher.checkpoint == "auto":
            tst = run_status(teacher_run_config(rc))
            teacher = f" [teacher {rc.teacher.arch} run {tst['run_id']}: {tst['status']}]"
        else:
            teacher = f" [teacher {rc.teacher.arch} from {rc.teacher.checkpoint}]"
    print(f"plan: {st['status']:<24} {st['run_id']} {rc.dataset.name} {rc.method.name} "
          f"{rc.teacher.arch if needs_teacher(rc) else 'none'}->{rc.student.arch} seed={rc.seed}{teacher}", flush=True)
    return st
