"""KED end to end on digits: the input superfeatures made once from the ordinary teacher and kept in the
store, the explaining teacher trained by `ce`, the KED student with its terms, scarce data with a chimeric
phase that resumes bit for bit, the KD+X baseline, and the CNN version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oracle_kd.cli import main

MLP = ["dataset=digits", "teacher=sfx4_mlp64", "student=sfx4_mlp16", "method=ked", "train=mlp_digits",
       "train.epochs=4", "train.milestones=[3]", "progress=false", "hardware=cpu"]
CHIMERIC = ["dataset.train_size=50", "train.chimeric_epochs=2", "train.chimeric_size=300", "train.chimeric_lr=0.01"]


def launch(store: Path, *args: str) -> None:
    assert main([f"store={store}", *args]) == 0


def records(store: Path) -> dict[str, dict]:
    return {f"{p.parts[-4]}/{p.parts[-3]}": json.loads(p.read_text()) for p in store.rglob("result.json")}


def rows(result: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(result["folder"]) / "metrics.jsonl").read_text().splitlines()]


def test_ked_mlp_makes_the_superfeatures_once_then_trains_teachers_and_student(tmp_path):
    store = tmp_path / "runs"
    launch(store, *MLP)
    res = records(store)
    assert set(res) == {"ce/none-mlp64", "ce/none-sfx4_mlp64", "ked/sfx4_mlp64-sfx4_mlp16"}
    files = list(store.rglob("superfeatures.json"))
    assert len(files) == 1
    sf = json.loads(files[0].read_text())
    assert len(sf["partition"]) == 4 and sorted(i for g in sf["partition"] for i in g) == list(range(64))
    assert len(sf["log_prior"]) == 10 and sf["identity"]["source"] == res["ce/none-mlp64"]["run_id"]
    student = res["ked/sfx4_mlp64-sfx4_mlp16"]
    assert student["semantic"]["superfeatures"] == sf["identity"]
    assert res["ce/none-sfx4_mlp64"]["semantic"]["superfeatures"] == sf["identity"]  # one partition for both
    assert "superfeatures" not in res["ce/none-mlp64"]["semantic"]
    assert {"train_ce", "train_kd", "train_explain"} <= set(rows(student)[0])
    before = files[0].stat().st_mtime_ns
    launch(store, *MLP, "seed=0")  # nothing is made twice
    assert files[0].stat().st_mtime_ns == before


def test_a_chimeric_phase_follows_the_main_epochs_and_resumes_bit_for_bit(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    launch(whole, *MLP, *CHIMERIC)
    launch(split, *MLP, *CHIMERIC, "stop_after_epoch=5")  # stopped inside the chimeric phase
    assert not [p for p in split.rglob("result.json") if "ked" in p.parts]
    launch(split, *MLP, *CHIMERIC)
    a, b = records(whole)["ked/sfx4_mlp64-sfx4_mlp16"], records(split)["ked/sfx4_mlp64-sfx4_mlp16"]
    assert a["epochs"] == 6 and a["semantic"]["dataset"]["train_size"] == 50
    assert a["semantic"]["train"]["chimeric_epochs"] == 2
    ra, rb = rows(a), rows(b)
    assert [r["epoch"] for r in ra] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in ra[-2:]] == [0.01, 0.01]
    assert ra[-1]["train_loss"] == rb[-1]["train_loss"] and a["best_top1"] == b["best_top1"]
    assert (Path(a["folder"]) / "model.pt").read_bytes() == (Path(b["folder"]) / "model.pt").read_bytes()
    # 50 real samples: < 1 batch per main epoch; 300 chimeric ones: 5 batches (the phase is its own loader)
    teacher = records(whole)["ce/none-sfx4_mlp64"]
    assert "train_size" not in teacher["semantic"]["dataset"] and "chimeric_epochs" not in teacher["semantic"]["train"]


def test_the_kd_baseline_continues_on_the_same_chimeric_inputs(tmp_path):
    store = tmp_path / "runs"
    launch(store, *MLP, "teacher=mlp64", "student=mlp16", "method=kd_ked", *CHIMERIC)
    res = records(store)
    assert set(res) == {"ce/none-mlp64", "kd/mlp64-mlp16"}
    assert res["kd/mlp64-mlp16"]["semantic"]["superfeatures"]["groups"] == 4 and res["kd/mlp64-mlp16"]["epochs"] == 6


def test_a_chimeric_phase_needs_a_teacher_on_the_plain_input(tmp_path, capsys):
    assert main([f"store={tmp_path}", *MLP, "teacher=mlp64", "student=mlp16", "method=oracle", *CHIMERIC]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: train.chimeric_epochs") and "oracle" in err[-1]


@pytest.mark.parametrize("feature", ["none", "at"])
def test_ked_on_superfeature_explaining_resnets(tmp_path, feature):
    store = tmp_path / "runs"
    launch(store, "dataset=digits", "teacher=sfx4_resnet14", "student=sfx4_resnet8", "method=ked",
           f"method.feature={feature}", "train=quick", "train.epochs=1", "progress=false", "hardware=cpu")
    student = records(store)["ked/sfx4_resnet14-sfx4_resnet8"]
    assert "superfeatures" not in student["semantic"]  # hidden superfeatures: nothing to compute beforehand
    assert set(rows(student)[0]) >= {"train_ce", "train_kd", "train_explain"} | ({"train_at"} if feature == "at" else set())


def test_the_ked_table_puts_ked_beside_kd_at_equal_parameters(tmp_path):
    import pandas as pd

    store, results = tmp_path / "runs", tmp_path / "results"
    for seed in ("0", "1"):
        launch(store, *MLP, "train.epochs=2", f"seed={seed}")
        launch(store, *MLP, "train.epochs=2", f"seed={seed}", "teacher=mlp64", "student=mlp16", "method=kd_ked")
        launch(store, *MLP, "train.epochs=2", f"seed={seed}", "dataset.train_size=50")
    launch(store, "task=tables", f"results_dir={results}")
    table = pd.read_csv(results / "ked.csv")
    assert set(table["pair"]) == {"mlp64->mlp16"} and set(table["regime"]) == {"all", "n=50"}
    full = table[table["regime"] == "all"].set_index("method")
    assert list(full.index) == ["KD", "KED"] and set(full["n_seeds"]) == {2}
    assert full.loc["KED", "student"] == "sfx4_mlp16" and full.loc["KD", "student"] == "mlp16"
    # equal parameter counts: the explaining student's branch width is matched to the plain one's
    ked, kd = full.loc["KED", "student_params"], full.loc["KD", "student_params"]
    assert abs(ked - kd) / kd < 0.06
    assert set(full["verdict"]) <= {"best", "not sig. worse", "worse"}
