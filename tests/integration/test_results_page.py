"""`task=tables` writes results/index.html: one self-contained page with every table and figure it wrote. Headless
Chromium (Debian's `chromium`) renders it: the tables are there with their rows, every figure decodes, and the
screenshot is not blank. The tables' labels are checked on the same store: a γ grid's curves are split by γ, the
variant column shows only what varies, the recipe reads as its preset and length."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.image import imread

from helpers.pages import outside_references
from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import main

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kd and Oracle KD at two γ on the tiny digits run (and their auto teacher), tabulated."""
    tmp = tmp_path_factory.mktemp("results_page")
    store, out = tmp / "runs", tmp / "results"
    assert main([f"store={store}", *TINY_RUN, "method=kd"]) == 0
    assert main(["-m", f"store={store}", *TINY_RUN, "method=oracle", "method.gamma=0.2,0.5"]) == 0
    assert main([f"store={store}", "task=tables", f"results_dir={out}"]) == 0
    return out


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--window-size=1280,2000", *args], capture_output=True, text=True, timeout=120)


def test_the_page_holds_every_table_and_figure_and_nothing_from_outside(results):
    html = (results / "index.html").read_text()
    assert outside_references(html) == []  # styles, script and images are inline
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) == len(list(results.glob("*.png"))) == 3 and all(s.startswith("data:image/png;base64,")
                                                                          for s in sources)
    for csv in results.glob("*.csv"):
        assert f'<section id="{csv.stem}">' in html, csv.name
    assert html.count('<p class="what">') == len(list(results.glob("*.csv"))) + 1  # + the learning curves


def test_the_labels_show_what_varies_and_the_recipe_by_name(results):
    fig5 = pd.read_csv(results / "fig5_pairs.csv", keep_default_na=False).set_index("method")
    assert fig5.loc["kd", "variant"] == "" and fig5.loc["oracle", "variant"] in ("gamma=0.2", "gamma=0.5")
    assert set(fig5["recipe"]) == {"quick · 2 ep"}
    assert "ce_weight_by_teacher" not in (results / "fig5_pairs.md").read_text()
    html = unescape((results / "index.html").read_text())
    assert "Learning curves on digits: resnet8 (no teacher), resnet8→resnet8 — test top-1 (%) per epoch" in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium): page not rendered")
def test_chromium_renders_the_tables_and_figures(results, tmp_path):
    page = (results / "index.html").as_uri()
    dom = _chromium("--dump-dom", page, profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    (rendered,) = re.findall(r'data-rendered="([^"]*)"', dom.stdout)  # what the page's script saw once loaded
    rendered = json.loads(unescape(rendered))
    csvs = sorted(results.glob("*.csv"), key=lambda p: (results / "index.html").read_text().index(f'id="{p.stem}"'))
    assert rendered["tables"] == len(csvs)
    assert rendered["rows"] == [len(pd.read_csv(p)) for p in csvs]
    assert len(rendered["images"]) == 3 and all(width > 0 for width in rendered["images"])  # each PNG decoded
    assert "6 tables and 3 of 3 figures shown." in dom.stdout

    shot = tmp_path / "page.png"
    run = _chromium(f"--screenshot={shot}", page, profile=tmp_path / "profile")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.1 and (pixels.mean(axis=2) < 0.5).mean() > 0.01  # text and plots, not a blank page
