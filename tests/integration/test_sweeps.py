"""Sweep presets, relaunch/skip, the run lock, and the aggregator through the real command line."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pandas as pd
import pytest

import oracle_kd.engine.trainer as trainer_module
from oracle_kd.cli import compose, main
from oracle_kd.methods import available_methods
from oracle_kd.store import record
from oracle_kd.store.io import read_metrics, run_lock
from oracle_kd.tasks.tables import build_tables, read_results

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ["--config-dir", str(ROOT / "sweeps"), "--config-name"]
@pytest.mark.parametrize("arm, plain", [("oracle_0.1", ["method=oracle", "method.gamma=0.1"]), ("dkd", ["method=dkd"]),
                                       ("oracle_0.5", ["method=oracle"])])
def test_a_demo_arm_is_the_same_run_as_its_plain_overrides(arm, plain, tmp_path, capsys):
    """sweeps/arm/ options only bundle a method with its options: the run (its run_id) is the one the plain
    overrides give, so arms and ordinary sweeps share their finished runs."""
    ids = []
    for args in ([f"+arm={arm}"], plain):
        assert main([*SWEEP, "demo", f"store={tmp_path}/runs", "task=plan", "seed=0", *args]) == 0
        (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("plan: ")]
        ids.append(line.split()[2])
    assert ids[0] == ids[1]


def test_seeds_extend_a_preset_grid(tmp_path, capsys):
    assert main(["-m", *SWEEP, "quick", f"store={tmp_path}/runs", "task=plan", "seed=0,1,2"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("plan: ")]) == 21


@pytest.mark.parametrize("launcher, target", [("joblib", "hydra_plugins.hydra_joblib_launcher"),
                                               ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher")])
def test_launchers_compose(launcher, target, tmp_path, capsys):
    assert main([*SWEEP, "table4", f"store={tmp_path}/runs", f"hydra/launcher={launcher}", "--cfg", "hydra"]) == 0
    assert target in capsys.readouterr().out


TINY = ["dataset=digits", "train=quick", "train.epochs=1", "train.milestones=[1]", "progress=false", "hardware=cpu"]
GRID = [*TINY, "method=kd,oracle", "teacher=resnet8,resnet14", "student=resnet8", "seed=0,1"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """2 methods × 2 pairs × 2 seeds of digits, 2 epochs, through the real CLI; counts trained epochs."""
    tmp = tmp_path_factory.mktemp("sweep")
    store = tmp / "runs"
    assert main(["-m", f"store={store}", *GRID]) == 0
    return tmp, store


def _epochs_trained(store: Path) -> int:
    return sum(len(read_metrics(p)) for p in store.rglob(record.METRICS))


def test_relaunching_a_sweep_trains_nothing(tiny_sweep, monkeypatch):
    _, store = tiny_sweep
    assert _epochs_trained(store) == 8 + 4  # 8 students + 4 auto teachers (2 archs × 2 seeds), 1 epoch each
    calls = []
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: calls.append(self.rid) or {})
    assert main(["-m", f"store={store}", *GRID]) == 0
    assert calls == []
    assert _epochs_trained(store) == 12


def test_aggregator_tables_from_the_sweep(tiny_sweep):
    tmp, store = tiny_sweep
    out = tmp / "results"
    assert main([f"store={store}", f"results_dir={out}", "task=tables"]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 12 and set(runs["method"]) == {"ce", "kd", "oracle"}
    fig5 = pd.read_csv(out / "fig5_pairs.csv")
    assert len(fig5) == 4 and set(fig5["n_seeds"]) == {2}
    assert {"best_top1_mean", "best_top1_std", "paper_top1", "diff"} <= set(fig5.columns)
    assert set(fig5["recipe"]) == {"quick · 1 ep"} and fig5["variant"].isna().all()  # one variant a method: none shown
    for row in fig5.itertuples():
        vals = runs[(runs.method == row.method) & (runs.teacher == row.teacher) & (runs.student == row.student)]["best_top1"]
        assert row.best_top1_mean == pytest.approx(vals.mean(), abs=1e-4)
        assert row.best_top1_std == pytest.approx(vals.std(), abs=1e-4)
    t4 = pd.read_csv(out / "table4.csv")
    assert list(t4["method"]) == ["teacher", "kd", "oracle"]  # resnet8 -> resnet8 only; paper order
    assert "digits/resnet8 best_top1_mean" in t4.columns and "digits/resnet8 n_seeds" in t4.columns
    assert (t4["digits/resnet8 n_seeds"] == 2).all()
    teacher_ce = runs[(runs.method == "ce") & (runs.student == "resnet8")]["best_top1"]
    assert t4.loc[0, "digits/resnet8 best_top1_mean"] == pytest.approx(teacher_ce.mean(), abs=1e-4)
    grid = pd.read_csv(out / "gamma_grid.csv")
    assert set(grid["gamma"]) == {0.5} and set(grid["n_seeds"]) == {2}
    for name in ("table4.md", "fig5_pairs.md", "fig5_pairs_digits.png", "gamma_grid.png", "learning_curves_digits.png"):
        assert (out / name).stat().st_size > 0, name
    assert "folder" not in runs.columns  # run paths stay out of the tables
    assert set(fig5["verdict"]) <= {"best", "not sig. worse", "worse"} and fig5["ci95"].notna().all()  # 2 seeds


def test_learning_curves_average_each_methods_seeds_per_epoch(tiny_sweep):
    from oracle_kd.tasks.tables import learning_curves, read_results

    _, store = tiny_sweep
    df, _ = read_results([store])
    curves = learning_curves(df)
    kd = df[(df.method == "kd") & (df.teacher == "resnet8")]
    assert len(curves[curves.run_id.isin(kd.run_id)]) == len(kd) * int(df["epochs"].iloc[0])
    last = curves[curves.run_id.isin(kd.run_id) & (curves.epoch == curves.epoch.max())]
    assert sorted(last["test_top1"]) == sorted(kd["last_top1"])  # the curve ends at each run's last test top-1


def test_last_epoch_metric_and_deterministic_output(tiny_sweep):
    tmp, store = tiny_sweep
    a, b = tmp / "a", tmp / "b"
    build_tables([store], a, metric="last", plots=False)
    build_tables([store], b, metric="last", plots=False)
    for f in sorted(a.glob("*.csv")):
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name
    assert "last_top1_mean" in pd.read_csv(a / "fig5_pairs.csv").columns


def test_corrupt_and_unfinished_records_are_reported_and_skipped(tiny_sweep, tmp_path, caplog):
    _, store = tiny_sweep
    broken = tmp_path / "broken" / "digits" / "kd" / "resnet8-resnet8"
    (broken / "aaa").mkdir(parents=True)
    (broken / "aaa" / "result.json").write_text('{"run_id": "aaa", "best_to')  # torn write
    (broken / "bbb").mkdir()
    (broken / "bbb" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (broken / "bbb" / "config.json").write_text("{}")  # a run that died before result.json
    (broken / "ccc").mkdir()
    (broken / "ccc" / "result.json").write_text(json.dumps({"run_id": "ccc"}))
    df, problems = read_results([store, tmp_path / "broken"])
    assert len(df) == 12
    why = sorted(p.why for p in problems)
    assert why[0].startswith("damaged: result.json is not valid JSON") and why[1].startswith("damaged: result.json lacks")
    assert why[2].startswith("unfinished")
    assert main([f"store={store}", f"tables.roots=[{tmp_path / 'broken'}]", f"results_dir={tmp_path}/r",
                 "task=tables"]) == 0


def _hold_until_released(folder: str, started: str, release: str, released: str) -> None:
    with run_lock(folder):
        Path(started).touch()
        while not Path(release).exists():
            time.sleep(0.01)
        Path(released).touch()  # still under the lock


def test_run_lock_makes_a_second_process_wait(tmp_path):
    """The second taker is told it waits (on_wait), and gets the lock only after the holder let go:
    ordered by marker files, not by timing."""
    folder = tmp_path / "run"
    started, release, released = (tmp_path / n for n in ("started", "release", "released"))
    holder = mp.get_context("spawn").Process(target=_hold_until_released,
                                             args=(str(folder), str(started), str(release), str(released)))
    holder.start()
    deadline = time.time() + 60
    while not started.exists():
        assert time.time() < deadline, "the holder never took the lock"
        time.sleep(0.01)
    waited = []

    def on_wait() -> None:
        waited.append(released.exists())
        release.touch()

    with run_lock(folder, on_wait=on_wait):
        after_release = released.exists()
    holder.join(timeout=60)
    assert waited == [False] and after_release


def test_parallel_jobs_needing_one_missing_teacher_train_it_once(tmp_path):
    store = tmp_path / "runs"
    assert main(["-m", f"store={store}", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hardware.threads=1",
                 "method=kd", "teacher=resnet8", "student=resnet8,resnet14"]) == 0
    (teacher_metrics,) = list((store / "digits" / "ce").rglob(record.METRICS))
    assert [r["epoch"] for r in read_metrics(teacher_metrics)] == [1]
    assert len(list(store.rglob(record.RESULT))) == 3


def test_oracle_teacher_table_sits_beside_the_papers_numbers(tmp_path):
    from oracle_kd.store.analysis import COLUMNS

    folder = tmp_path / "runs" / "cifar100" / "analysis" / "resnet20" / "abc123"
    folder.mkdir(parents=True)
    rows = [{c: None for c in COLUMNS} | {"dataset": "cifar100", "split": "train", "teacher": "resnet20",
                                           "analysis_id": "abc123", "gamma": g, "top1": 70.0 + g}
            for g in (0.0, 1.0)]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / "oracle_teacher.csv", index=False)
    tables = build_tables([tmp_path / "runs"], tmp_path / "results", plots=False)
    t = pd.read_csv(tmp_path / "results" / "oracle_teacher.csv").set_index("gamma")
    assert "oracle_teacher" in tables
    assert t.loc[1.0, "paper_top1_scratch"] == 68.68 and t.loc[1.0, "paper_top1_oracle"] == 90.60
    assert t.loc[0.0, "paper_silhouette_fine_tsne_train"] == 0.045
    assert t.loc[1.0, "paper_silhouette_fine_tsne_train"] == 0.277
    assert t.loc[1.0, "paper_entropy_bits_oracle"] == 0.37


def test_table5_preset_runs_to_the_aggregator_on_tiny_trees(tmp_path):
    from helpers.imagefolder_fixtures import write_tiny_imagenet

    write_tiny_imagenet(tmp_path / "data", classes=3, per_class=4, val_per_class=2)
    store = tmp_path / "runs"
    assert main(["-m", *SWEEP, "table5", f"store={store}", f"dataset.root={tmp_path / 'data'}", "dataset.workers=0",
                 "teacher=resnet18", "student=resnet18", "method=kd,oracle", "train.epochs=1", "train.batch_size=6",
                 "train.eval_batch_size=6", "progress=false", "hardware=cpu"]) == 0
    assert main([f"store={store}", f"results_dir={tmp_path}/results", "task=tables"]) == 0
    t5 = pd.read_csv(tmp_path / "results" / "table5.csv")
    assert list(t5["method"]) == ["teacher", "kd", "oracle"]
    assert set(t5["dataset"]) == {"tiny_imagenet"} and set(t5["n_seeds"]) == {1}
    assert t5.set_index("method").loc["oracle", "paper_top1"] == 66.25


def test_crd_benchmark_plans_its_pairs_and_methods_and_its_table_reads_them(tmp_path, capsys):
    """One of the benchmark's cross-family pairs on digits, with its light-student lr: the plan names every method
    of the grid (every registered method on plain models: KED distils explaining models and MLKD has its own recipe
    in sweeps/lskd.yaml) as one cohort, DKD gets mdistiller's per-pair β, and the table has teacher, student and
    method rows."""
    sweep = ["-m", *SWEEP, "crd_benchmark", f"store={tmp_path / 'runs'}", "pair=res32x4_shuv1"]
    assert main([*sweep, "task=plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    plan = [line for line in out if line.startswith("plan: ")]
    methods = set(available_methods()) - {"ce", "ked", "mlkd"}
    assert len(plan) == len(methods) + 1  # and the plain ce student
    assert {line.split()[4] for line in plan if "resnet32x4->shufflenetv1" in line} == methods
    assert [line for line in out if line.startswith("plan total: ")] == [
        f"plan total: {len(plan)} runs in 1 cohort(s) after 1 teacher run(s)"]
    assert compose(["+pair=vgg13_vgg8", "method=dkd_crd"]).method.beta == 6.0  # mdistiller's per-pair β
    assert compose(["+pair=res56_res20", "method=dkd_crd"]).method.beta == 2.0
    tiny = ["dataset=digits", "train=quick", "train.epochs=1", "train.milestones=[1]", "teacher.train=same",
            "progress=false", "hardware=cpu", "method=ce,dkd_crd", "pair=res32x4_shuv1", "hydra/launcher=cohort"]
    assert main([*sweep[:-1], *tiny]) == 0
    (dkd,) = [r for r in map(json.loads, map(Path.read_text, (tmp_path / "runs").rglob("result.json")))
              if r["method"] == "dkd"]
    assert dkd["semantic"]["method"]["beta"] == 8.0 and dkd["semantic"]["train"]["lr"] == 0.01  # light student
    assert main([f"store={tmp_path / 'runs'}", f"results_dir={tmp_path / 'res'}", "task=tables"]) == 0
    table = pd.read_csv(tmp_path / "res" / "crd_benchmark.csv")
    assert set(zip(table["teacher"], table["student"])) == {("resnet32x4", "shufflenetv1")}
    assert set(table["method"]) == {"teacher", "student", "dkd"}
    assert table["paper_top1"].isna().all()  # digits: the published numbers are CIFAR-100's
