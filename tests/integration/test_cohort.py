"""Cohort training: runs that share a batch stream and a teacher train together, and each ends with
exactly the records of its solo run (bit-identical on CPU fp32: the shared teacher outputs are the same
ops on the same tensors), also when stopped, relaunched, or resumed from different epochs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from oracle_kd.cli import compose
from oracle_kd.engine.trainer import run, run_cohort

BASE = ["dataset=digits", "teacher=resnet8", "student=resnet8", "train=quick", "train.epochs=2",
        "train.milestones=[1]", "progress=false", "hardware=cpu"]
MEMBERS = [["method=ce"], ["method=kd"], ["method=dkd"], ["method=at"], ["method=fitnet"], ["method=sad"],
           ["method=oracle", "method.gamma=0.2"], ["method=oracle", "method.gamma=0.5"]]


SOME = [MEMBERS[i] for i in (1, 5, 6, 7)]  # kd, sad, oracle γ=0.2 and 0.5: the faults need not all eight


def configs(store: Path, *extra: str, members: list[list[str]] = MEMBERS) -> list:
    return [compose([*BASE, *m, f"store={store}", *extra]) for m in members]


def same_as_solo(store: Path, solo: dict) -> bool:
    snap = snapshot(store)
    return bool(snap) and snap == {k: solo[k] for k in snap}


def snapshot(store: Path) -> dict[str, tuple[str, list[dict], float, float]]:
    """Per run folder: model.pt's hash, the metrics rows without their times, best and last top-1."""
    out = {}
    for res in sorted(store.rglob("result.json")):
        folder = res.parent
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            r.pop("epoch_time_s")
        rec = json.loads(res.read_text())
        out[str(folder.relative_to(store))] = (hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest(), rows,
                                               rec["best_top1"], rec["last_top1"])
    return out


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = tmp_path_factory.mktemp("solo")
    for rc in configs(store):
        run(rc)
    return snapshot(store)


def test_a_cohort_gives_every_member_its_solo_records(solo, tmp_path):
    results = run_cohort(configs(tmp_path))
    assert snapshot(tmp_path) == solo and len(solo) == 8
    # the ce member is the oracle/kd members' auto teacher: trained first, alone; the other 7 together
    assert sorted(r["cohort"]["size"] for r in results) == [1] + [7] * 7
    shares = [r["cohort"]["time_share"] for r in results if r["cohort"]["size"] == 7]
    assert all(0 < s < 1 for s in shares) and sum(shares) == pytest.approx(1.0, abs=0.02)


def test_a_stopped_cohort_resumes_to_the_uninterrupted_numbers(solo, tmp_path):
    stopped = run_cohort(configs(tmp_path, "stop_after_epoch=1", members=SOME))
    assert [r["status"] for r in stopped] == ["stopped"] * 4
    run_cohort(configs(tmp_path, members=SOME))
    assert same_as_solo(tmp_path, solo) and len(snapshot(tmp_path)) == 5  # + the auto teacher


def test_members_at_different_epochs_catch_up_before_sharing(solo, tmp_path):
    """kd and one oracle run went ahead alone (epoch 1, then the oracle finished); the cohort relaunch trains
    the laggards' epoch 1 without them and then all together."""
    run(compose([*BASE, "method=kd", f"store={tmp_path}", "stop_after_epoch=1"]))
    run(compose([*BASE, "method=oracle", "method.gamma=0.5", f"store={tmp_path}"]))
    results = run_cohort(configs(tmp_path, members=SOME))
    assert all(r["status"] == "finished" for r in results)
    assert same_as_solo(tmp_path, solo) and len(snapshot(tmp_path)) == 5


def test_runs_that_do_not_share_a_stream_are_refused(tmp_path):
    rcs = [compose([*BASE, "method=kd", f"store={tmp_path}"]), compose([*BASE, "method=kd", "seed=1", f"store={tmp_path}"])]
    with pytest.raises(ValueError, match="do not share one batch stream"):
        run_cohort(rcs)
