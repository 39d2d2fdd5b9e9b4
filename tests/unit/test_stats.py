"""Which differences are real: the 95 % interval and Welch's test, checked against hand computations."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from oracle_kd.core.stats import ci95_half_width, welch_p
from oracle_kd.tasks.tables import significance, to_markdown

T_975_DF2 = 4.302652729749462  # Student's t quantile, 0.975, 2 degrees of freedom (tables: 4.3027)


def test_ci95_is_t_times_standard_error():
    # seeds 70, 71, 72: mean 71, std (ddof 1) 1, n 3 -> 4.3027 · 1 / √3 = 2.4841
    assert ci95_half_width(1.0, 3) == pytest.approx(T_975_DF2 / math.sqrt(3), rel=1e-12)
    assert ci95_half_width(1.0, 3) == pytest.approx(2.4841, abs=1e-4)
    assert math.isnan(ci95_half_width(0.0, 1))


def test_welch_matches_the_hand_computation():
    # 71 ± 1 vs 69 ± 1, three seeds each: t = 2 / √(1/3 + 1/3) = 2.4495; Welch–Satterthwaite df =
    # (2/3)² / (2 · (1/3)² / 2) = 4; two-sided p = 2 · P(T_4 > 2.4495) = 0.070484
    assert welch_p(71, 1, 3, 69, 1, 3) == pytest.approx(0.070484, abs=1e-6)
    # unequal spread: 75 ± 0.5 (n 4) vs 70 ± 2 (n 3): variances of the means 0.0625 and 1.3333, t = 5 / √1.3958 =
    # 4.2321, df = 1.3958² / (0.0625²/3 + 1.3333²/2) = 2.1887, two-sided p = 0.0439
    assert welch_p(75, 0.5, 4, 70, 2, 3) == pytest.approx(0.0439, abs=1e-4)
    assert math.isnan(welch_p(71, 0, 1, 69, 1, 3))
    assert welch_p(70, 0, 3, 70, 0, 3) == 1.0 and welch_p(71, 0, 3, 70, 0, 3) == 0.0


def test_significance_marks_each_row_against_the_cells_best():
    stats = pd.DataFrame([
        {"cell": "a", "method": "teacher", "mean": 80.0, "std": 0.0, "n_seeds": 3},
        {"cell": "a", "method": "oracle", "mean": 71.0, "std": 1.0, "n_seeds": 3},
        {"cell": "a", "method": "kd", "mean": 69.0, "std": 1.0, "n_seeds": 3},
        {"cell": "a", "method": "at", "mean": 60.0, "std": 1.0, "n_seeds": 3},
        {"cell": "b", "method": "kd", "mean": 50.0, "std": 0.0, "n_seeds": 1},
        {"cell": "b", "method": "oracle", "mean": 49.0, "std": 0.0, "n_seeds": 1},
    ])
    out = significance(stats, ["cell"]).set_index(["cell", "method"])
    assert out.loc[("a", "teacher"), "verdict"] == ""  # a reference row, never the best method
    assert out.loc[("a", "oracle"), "verdict"] == "best"
    assert out.loc[("a", "oracle"), "vs_best"] == 2.0  # the best against the runner-up
    assert out.loc[("a", "kd"), "verdict"] == "not sig. worse"  # p = 0.0705
    assert out.loc[("a", "kd"), "p_vs_best"] == pytest.approx(0.070484, abs=1e-6)
    assert out.loc[("a", "at"), "verdict"] == "worse"
    assert out.loc[("a", "kd"), "ci95"] == pytest.approx(2.4841, abs=1e-4)
    assert out.loc[("b", "kd"), "verdict"] == "best (n=1, no test)"
    assert out.loc[("b", "oracle"), "verdict"] == "n=1, no test" and math.isnan(out.loc[("b", "oracle"), "ci95"])
    md = to_markdown(out.reset_index(), "t")
    assert "| a | **oracle** |" in md and "| a | kd |" in md


def test_the_console_summary_splits_a_method_by_its_varying_options_never_pools_them():
    from oracle_kd.tasks.tables import summary_text

    runs = pd.DataFrame([
        {"dataset": "digits", "teacher": "resnet20", "student": "resnet8", "method": m, "method.gamma": g,
         "method.alpha": 1.0, "best_top1": acc}
        for m, g, acc in [("kd", None, 96.0), ("kd", None, 96.5), ("oracle", 0.1, 97.0), ("oracle", 0.1, 96.0),
                          ("oracle", 2.0, 98.0), ("oracle", 2.0, 97.0)]])
    lines = summary_text(runs, "best").splitlines()
    rows = {" ".join(ln.split()[3:-4]): ln.split()[-4:] for ln in lines[1:]}
    assert rows == {"kd": ["2", "96.25", "±", "0.35"], "oracle gamma=0.1": ["2", "96.50", "±", "0.71"],
                    "oracle gamma=2": ["2", "97.50", "±", "0.71"]}  # alpha is the same everywhere: not shown
    # the same method under two recipes (KD with SGD and with DOT) is two lines, each with its recipe
    two = runs.assign(recipe=["quick · 12 ep", "quick · 12 ep · dot", "quick · 12 ep", "quick · 12 ep", "quick · 12 ep",
                              "quick · 12 ep"])
    kd = [ln for ln in summary_text(two, "best").splitlines() if " kd " in ln]
    assert len(kd) == 2 and any("dot" in ln and " 1 " in ln and "96.50" in ln for ln in kd)
