"""What the tables call things: a variant by the options that tell it apart within its table, a recipe by its preset
and length (its hash only where two recipes would read the same), a learning curve by the options that vary, and
every figure by a title naming dataset, pair and metric. No training: hand-made records."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from helpers.pages import outside_references
from oracle_kd.config import load_train_preset
from oracle_kd.store.identity import train_identity
from oracle_kd.tasks.tables import paper, plots
from oracle_kd.tasks.tables.labels import method_labels, recipe_label, unique_recipes, variant_key, varying_options
from oracle_kd.tasks.tables.page import Section, page_html

KD = {"name": "kd", "alpha": 1.0, "ce_weight": 1.0, "ce_weight_by_teacher": None, "temperature": 4.0}
ORACLE = {"name": "oracle", "alpha": 1.0, "ce_weight": 1.0, "ce_weight_by_teacher": None, "gamma_reduction": "mean",
          "rec_num": 1, "temperature": 2.0}


def _quick(**changes: object) -> dict:
    return {**train_identity(load_train_preset("quick")), **changes}


def _runs(rows: list[tuple[str, str, dict, float]]) -> pd.DataFrame:
    """Runs of digits, quick recipe, student resnet8: (teacher, method, options, best top-1) each."""
    return pd.DataFrame([{"dataset": "digits", "recipe": "quick · 12 ep", "teacher": t, "student": "resnet8",
                          "method": m["name"], "variant": variant_key(m), "best_top1": acc, "seed": i}
                         for i, (t, _, m, acc) in enumerate(rows)])


def test_only_the_options_that_vary_within_a_method_are_shown():
    methods = ["kd", "kd", "oracle", "oracle", "oracle"]
    options = [{"t": 4.0, "a": 1}, {"t": 4.0, "a": 1}, {"gamma": 0.2, "t": 2.0}, {"gamma": 0.5, "t": 2.0}, {"t": 2.0}]
    assert varying_options(methods, options) == ["", "", "gamma=0.2", "gamma=0.5", "gamma=None"]


def test_fig5_names_the_gamma_it_kept_and_nothing_every_row_shares():
    """Four γ of Oracle KD over two pairs: each pair keeps its best γ and says which; kd's options (all the same,
    `ce_weight_by_teacher=None` among them) are not shown."""
    rows = [(t, "kd", KD, 90.0) for t in ("resnet8", "resnet14")]
    for t, best in (("resnet8", 0.5), ("resnet14", 0.2)):
        rows += [(t, "oracle", {**ORACLE, "gamma": g}, 95.0 if g == best else 91.0) for g in (0.1, 0.2, 0.5, 1.0)]
    fig5 = paper.fig5_pairs(_runs(rows), "best").set_index(["teacher", "method"])["variant"]
    assert fig5.to_dict() == {("resnet8", "kd"): "", ("resnet14", "kd"): "", ("resnet8", "oracle"): "gamma=0.5",
                              ("resnet14", "oracle"): "gamma=0.2"}


def test_a_table_of_one_variant_per_method_shows_no_options():
    rows = [("resnet8", "kd", KD, 90.0), ("resnet8", "oracle", {**ORACLE, "gamma": 0.5}, 91.0)]
    assert set(paper.fig5_pairs(_runs(rows), "best")["variant"]) == {""}


@pytest.mark.parametrize("train, label", [(_quick(), "quick · 12 ep"), (_quick(epochs=2, milestones=[1]), "quick · 2 ep"),
                                          (_quick(lr=0.5), "12 ep"),  # no preset has this lr
                                          (train_identity(load_train_preset("paper")), "paper · 240 ep")])
def test_a_recipe_reads_as_its_preset_and_length(train, label):
    assert recipe_label(train) == label


def test_the_hash_is_added_only_where_two_recipes_read_the_same():
    labels = pd.Series(["quick · 12 ep", "quick · 12 ep", "12 ep", "12 ep", "paper · 240 ep"])
    hashes = pd.Series(["aaaaaa", "aaaaaa", "bbbbbb", "cccccc", "dddddd"])
    assert list(unique_recipes(labels, hashes)) == ["quick · 12 ep", "quick · 12 ep", "12 ep · bbbbbb",
                                                    "12 ep · cccccc", "paper · 240 ep"]


def test_method_labels_split_a_method_by_its_varying_options_only():
    df = pd.DataFrame({"method": ["kd", "oracle", "oracle"], "method.gamma": [None, 0.2, 2.0],
                       "method.alpha": [1.0, 1.0, 1.0]})
    assert list(method_labels(df)) == ["kd", "oracle gamma=0.2", "oracle gamma=2"]


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every figure the plots write, as (file name, suptitle, legend texts of each panel), without writing it."""
    out: list = []

    def record(path: Path, fig) -> None:
        legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend()]
        out.append((Path(path).name, fig.get_suptitle(), legends))

    monkeypatch.setattr(plots, "atomic_write_figure", record)
    return out


def _curves() -> pd.DataFrame:
    runs = [("oracle", g, seed) for g in (0.1, 0.2, 0.5, 1.0) for seed in (0, 1, 2)] + [("kd", None, 0)]
    rows = [{"run_id": f"{m}{g}{s}", "epoch": e, "test_top1": 50.0 + e, "dataset": "digits", "recipe": "quick · 12 ep",
             "teacher": "resnet14", "student": "resnet8", "method": m, "seed": s, "method.gamma": g}
            for m, g, s in runs for e in (1, 2)]
    df = pd.DataFrame(rows)
    return df.assign(line=method_labels(df))


def test_learning_curves_draw_a_line_per_gamma_not_one_pooled_line(drawn, tmp_path):
    plots.plot_curves(_curves(), tmp_path)
    ((name, _, legends),) = drawn
    assert name == "learning_curves_digits.png"
    assert legends == [["kd (n=1)", "oracle gamma=0.1 (n=3)", "oracle gamma=0.2 (n=3)", "oracle gamma=0.5 (n=3)",
                        "oracle gamma=1 (n=3)"]]


def test_every_figure_is_titled_with_dataset_pair_and_metric(drawn, tmp_path):
    rows = [("resnet14", "kd", KD, 90.0), ("resnet14", "oracle", {**ORACLE, "gamma": 0.5}, 91.0)]
    runs = _runs(rows).assign(**{"method.gamma": 0.5, "method.gamma_reduction": "mean", "train.batch_size": 64})
    fig5 = paper.fig5_pairs(runs, "best").rename(columns={"mean": "best_top1_mean", "std": "best_top1_std"})
    grid = paper.gamma_grid(runs, "best").rename(columns={"mean": "best_top1_mean", "std": "best_top1_std"})
    plots.plot_fig5(fig5, tmp_path / "fig5_pairs.png", "best")
    plots.plot_gamma(grid, tmp_path / "gamma_grid.png", "best")
    plots.plot_curves(_curves(), tmp_path)
    assert [name for name, _, _ in drawn] == ["fig5_pairs_digits.png", "gamma_grid.png", "learning_curves_digits.png"]
    for name, title, _ in drawn:
        flat = " ".join(title.split())
        assert "digits" in flat and "resnet14→resnet8" in flat and "test top-1 (%)" in flat, (name, flat)
    assert "best-epoch" in drawn[0][1] and "best-epoch" in " ".join(drawn[1][1].split())


def test_the_page_is_self_contained_and_its_tables_sortable(tmp_path):
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    table = pd.DataFrame({"method": ["kd", "oracle"], "best_top1_mean": [90.0, float("nan")], "verdict": ["", "best"]})
    html = page_html("2 runs", [Section("fig5_pairs", "Figure 5", "Every pair.", table, (plots.Figure(png, "A plot"),))])
    assert outside_references(html) == []
    assert re.findall(r'src="([^"]*)"', html) == ["data:image/png;base64,iVBORw0KGgo="]
    assert '<table class="sortable">' in html and "<p class=\"what\">Every pair.</p>" in html
    assert '<td class="num" data-v="90.0">90.00</td>' in html and '<tr class="best">' in html


def test_fig5_draws_a_line_per_recipe_where_a_dataset_has_several(drawn, tmp_path):
    """kd on one pair with two recipes (the SGD preset and a DOT recipe no preset gives): two lines, never one line
    through two recipes (which would also put two points on one teacher)."""
    fig5 = pd.DataFrame([{"dataset": "digits", "recipe": recipe, "teacher": "resnet14", "student": "resnet8",
                          "method": "kd", "best_top1_mean": acc, "best_top1_std": 0.0}
                         for recipe, acc in (("quick · 12 ep", 90.0), ("12 ep", 89.0))])
    plots.plot_fig5(fig5, tmp_path / "fig5_pairs.png", "best")
    ((name, _, legends),) = drawn
    assert name == "fig5_pairs_digits.png" and legends == [["kd · 12 ep", "kd · quick · 12 ep"]]
