"""task=bench with bench.cohorts: a cohort step trains every member exactly as its solo step does, sharing
the teacher's work lowers the FLOP count, and the CLI writes one CSV row per preset. Tiny configs; nothing
here asserts a timing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from oracle_kd.cli import compose, main
from oracle_kd.methods import methods_in_table_order
from oracle_kd.tasks.bench import cohort, report
from oracle_kd.tasks.bench import config as bench_config

TINY = ["task=bench", "hardware=cpu", "hardware.threads=1", "progress=false", "bench.batch_size=8", "bench.steps=1",
        "bench.repeats=1", "bench.warmup=1", "bench.synthetic_images=16"]


@pytest.fixture(autouse=True)
def few_repeats(monkeypatch):
    """The task asks for a median of >= 5 repeats; these tests take 1 to stay fast."""
    monkeypatch.setattr(bench_config, "BENCH_MIN_REPEATS", 1)
    torch.set_num_threads(1)  # the machine is shared: no OpenMP spinning against other processes


def test_presets_are_the_cohorts_asked_for():
    methods = ["dkd", "at", "fitnet", "kd", "sad", "oracle"]
    p = cohort.PRESETS
    assert [(m.method, m.student) for m in p["quick"].members] == [
        (m, "resnet20") for m in ("ce", "kd", "dkd", "at", "fitnet", "sad", "oracle")]
    assert [(m.method, m.student) for m in p["fig5_slice"].members] == [
        (m, s) for s in ("resnet20", "resnet32") for m in methods]
    assert [dict(m.overrides)["gamma"] for m in p["gamma_grid"].members] == [0, 0.1, 0.2, 0.5, 1, 2]
    assert {q.teacher for q in p.values()} == {"resnet56"}
    # the registry's list: every method with a teacher on plain models and one view (not KED's explaining models,
    # not MLKD's second view), so a new method joins it by being registered
    assert [m.method for m in p["benchmark"].members] == [
        m for m in methods_in_table_order() if m not in ("ce", "ked", "mlkd")]
    assert (p["quick"].dataset, p["quick"].pad, p["quick"].flip) == ("digits", 1, False)


@pytest.mark.parametrize("name", ["quick", "gamma_grid"])
def test_one_cohort_step_trains_every_member_as_its_solo_step(tmp_path, name):
    """From the same initial state, one step on the same batch: bit-identical student weights and extras
    (CPU fp32), so what the bench compares is the cost of the same computation."""
    rc = compose([f"results_dir={tmp_path}", *TINY])
    device = torch.device("cpu")
    s = cohort.open_setting(rc, name, device)
    solo = cohort.build_members(s)
    together = cohort.build_members(s, like=solo)
    before = [{k: v.clone() for k, v in m.distiller.trainable_state_dict().items()} for m in solo]
    batches = cohort.preset_batches(s)
    x, y = next(batches)
    batches.close()
    assert x.shape[1:] == s.input_shape and x.dtype == torch.float32
    cohort.solo_step(solo, s.amp)(x, y)
    cohort.cohort_step(together, s.teacher, s.amp)(x, y)
    for a, b, init in zip(solo, together, before):
        sa, sb = a.distiller.trainable_state_dict(), b.distiller.trainable_state_dict()
        assert sa.keys() == sb.keys() == init.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{a.label}: {k}"
        assert not all(torch.equal(sa[k], init[k]) for k in sa), f"{a.label} did not train"


def test_cli_writes_one_row_per_preset_and_sharing_lowers_the_flops(tmp_path, capsys):
    assert main([f"results_dir={tmp_path}", f"store={tmp_path}/runs", *TINY, "bench.cohorts=[quick,gamma_grid]",
                 f"bench.out_dir={tmp_path}/out"]) == 0
    out = capsys.readouterr().out
    (path,) = (tmp_path / "out").glob("cohort_*.csv")
    assert f"-> {path}" in out and "flop ratio" in out
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == report.COHORT_COLUMNS
        rows = {r["preset"]: r for r in reader}
    assert list(rows) == ["quick", "gamma_grid"]
    assert int(rows["quick"]["members"]) == 7 and rows["quick"]["image_shape"] == "1x8x8"
    assert rows["quick"]["data"] == "real" and rows["gamma_grid"]["data"] == "synthetic"
    grid = rows["gamma_grid"]
    assert int(grid["members"]) == 6 and int(grid["teacher_inputs"]) == 6 and grid["num_classes"] == "100"
    assert float(grid["cohort_step_gflop"]) < float(grid["solo_step_gflop"])  # one Step A gradient for every γ
    for r in rows.values():
        assert r["device"] == "cpu" and r["peak_mem_kind"].startswith("cpu") and r["largest_member"]
        for col in ("solo_img_s", "cohort_img_s", "ratio", "flop_ratio", "solo_step_gflop", "cohort_step_gflop"):
            assert float(r[col]) > 0, col
        assert float(r["flop_ratio"]) > 1
        assert len(r["solo_img_s_repeats"].split(";")) == len(r["cohort_img_s_repeats"].split(";")) == 1
        assert f"{r['preset']}" in out
    assert not list((tmp_path / "bench").glob("bench_*.csv"))  # only the cohort comparison ran


@pytest.mark.parametrize("override, expected", [
    ("bench.cohorts=[quick,gama_grid]", "bench.cohorts='gama_grid' is not one of: quick, fig5_slice, gamma_grid"),
    ("bench.cohorts=[quick,quick]", "bench.cohorts=['quick', 'quick'] names a preset twice"),
])
def test_bad_cohort_presets_are_one_line(capsys, tmp_path, override, expected):
    assert main([f"store={tmp_path}/runs", *TINY, override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1


def test_defaults_leave_the_cohort_comparison_off(tmp_path: Path):
    assert compose([f"results_dir={tmp_path}", "task=bench"]).bench.cohorts == []
