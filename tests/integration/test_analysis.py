"""task=analyze end to end on digits with a tiny teacher (the session's shared teacher store)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from helpers.oracle_setting import ORACLE_BASE
from oracle_kd.cli import main
from oracle_kd.store.analysis import CSV_NAME, collect_analysis

BASE = [*ORACLE_BASE, "analyze.tsne_samples=150"]


@pytest.fixture
def store(teacher_store: Path) -> Path:
    return teacher_store


def analysis_rows(store: Path) -> pd.DataFrame:
    (csv,) = store.rglob(CSV_NAME)
    return pd.read_csv(csv)


# ----------------------------------------------------------------------------- settings
def test_bad_analyze_settings_are_one_line_errors(capsys, tmp_path):
    assert main([f"store={tmp_path}", *BASE, "task=analyze", "analyze.split=val"]) == 2
    assert main([f"store={tmp_path}", *BASE, "task=analyze", "analyze.gammas=[-1]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: analyze.split='val' is not one of: train, test")
    assert err[1].startswith("error: analyze.gammas=[-1.0] must be")


# ----------------------------------------------------------------------------- task=analyze end to end
def test_analyze_oracle_teacher_beats_scratch_and_writes_the_store(store, capsys):
    assert main([f"store={store}", *BASE, "task=analyze", "analyze.gammas=[0,1]"]) == 0
    assert "silhouette_fine" in capsys.readouterr().out  # the table is printed
    df = analysis_rows(store).set_index("gamma")
    assert list(df.index) == [0.0, 1.0]
    assert df.loc[1.0, "top1"] > df.loc[0.0, "top1"]  # Table 1's effect on digits
    assert df.loc[1.0, "entropy_bits"] < df.loc[0.0, "entropy_bits"]  # Table 3's
    assert (df.n_samples == 450).all() and (df.silhouette_n == 200).all()
    assert df.silhouette_coarse.isna().all() and df.silhouette_fine.notna().all()  # digits: no coarse labels
    assert set(df.teacher) == {"resnet8"} and set(df.teacher_source) == {"auto"} and set(df.split) == {"test"}
    folder = next(store.rglob(CSV_NAME)).parent
    assert folder.parent.name == "resnet8" and folder.parent.parent.name == "analysis"
    assert {p.name for p in folder.glob("*.png")} == {"tsne_gamma_0.png", "tsne_gamma_1.png"}

    # another γ grid on the same settings adds its rows to the same table; collect_analysis reads it once
    assert main([f"store={store}", *BASE, "task=analyze", "analyze.gammas=[0.5]", "analyze.tsne_plots=false"]) == 0
    assert list(analysis_rows(store).gamma) == [0.0, 0.5, 1.0]
    both = collect_analysis([store, store, store / "missing"])
    assert list(both.gamma) == [0.0, 0.5, 1.0]
    assert both.loc[both.gamma == 1.0, "top1"].item() == df.loc[1.0, "top1"]
