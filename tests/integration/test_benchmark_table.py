"""`task=tables` writes results/benchmark.csv and .md from a real store: the tiny digits run with kd, once with the
SGD recipe and once with the DOT optimizer, through the real command line. Both runs are cells of their own
(`kd`, `kd+dot`), each with the teacher and plain-student rows of its pair; every published number is there with
its source; the page shows the table; the same store gives the same bytes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import main
from oracle_kd.tasks.tables import build_tables
from oracle_kd.tasks.tables.paper import published


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("benchmark")
    store, out = tmp / "runs", tmp / "results"
    assert main([f"store={store}", *TINY_RUN, "method=kd"]) == 0
    assert main([f"store={store}", *TINY_RUN, "method=kd", "train.optimizer=dot"]) == 0
    assert main([f"store={store}", "task=tables", f"results_dir={out}"]) == 0
    return out


def test_the_runs_are_cells_beside_every_published_number(results):
    table = pd.read_csv(results / "benchmark.csv", keep_default_na=False)
    for col in ("n", "statistic", "measured", "measured_std", "published", "published_std", "protocol", "source",
                "diff", "tolerance", "flag"):
        assert col in table.columns, col
    digits = table[table["dataset"] == "digits"].set_index(["method", "recipe"])
    assert set(digits.index.get_level_values("method")) == {"teacher", "student", "kd", "kd+dot"}
    assert set(digits.loc["kd+dot"].index) != set(digits.loc["kd"].index)  # the DOT recipe is a recipe of its own
    assert (digits["n"] == 1).all() and (digits["statistic"] == "best_top1 mean").all()  # tables.metric: no source
    assert (digits[["published", "source", "flag"]] == "").all().all()
    paper = table[table["dataset"] != "digits"]
    assert len(paper) == len(published()) and (paper["n"] == 0).all() and (paper["source"] != "").all()
    assert "| digits | resnet8 | resnet8 | kd+dot |" in (results / "benchmark.md").read_text()


def test_the_page_shows_the_benchmark(results):
    html = (results / "index.html").read_text()
    assert '<section id="benchmark">' in html and "benchmark.csv" in html


def test_the_same_store_gives_the_same_bytes(results, tmp_path):
    store = results.parent / "runs"
    build_tables([store], tmp_path / "a", plots=False)
    build_tables([store], tmp_path / "b", plots=False)
    assert (tmp_path / "a" / "benchmark.csv").read_bytes() == (tmp_path / "b" / "benchmark.csv").read_bytes()
