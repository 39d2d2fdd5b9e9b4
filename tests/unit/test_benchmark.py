"""The benchmark table and the published numbers behind it. The published file is checked as data (every row has
its source and a protocol, the architectures are spelled as the zoo spells them, each source's table has the cells
it prints and no cell it lacks); the comparison is checked on numbers worked out by hand: which per-run number a
protocol reads, the band max(2·std, 0.5) and its flag, and the labels a run gets (`kd+ls`, `kd+dot`, `ttm`). No
training: runs are hand-made records in the shape `records.read_results` gives."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from oracle_kd.methods import available_methods
from oracle_kd.models import available_models
from oracle_kd.tasks.tables.benchmark import PROTOCOLS, benchmark, flag, summary, tolerance
from oracle_kd.tasks.tables.labels import benchmark_labels
from oracle_kd.tasks.tables.paper import benchmark_paper, published

PAIR = {"dataset": "cifar100", "teacher": "resnet56", "student": "resnet20"}


def _run(run_id: str, method: str, best: float, last: float, **extra: object) -> dict:
    """A finished run as the tables read it; `options` are its method options (the variant key)."""
    options = extra.pop("options", {})
    row = {**PAIR, "run_id": run_id, "method": method, "recipe": "crd · 240 ep", "variant": json.dumps(options,
           sort_keys=True), "best_top1": best, "last_top1": last, "teacher_run_id": "-", "teacher_test_top1": None}
    row.update({f"method.{k}": v for k, v in options.items()})
    row.update(extra)
    return row


def _published(*rows: tuple[str, float, str]) -> pd.DataFrame:
    """Published numbers for PAIR: (method, top-1, protocol) each, from two made-up sources in turn."""
    return pd.DataFrame([{**PAIR, "method": m, "top1": v, "std": math.nan, "source_repo": f"src/{i}",
                          "source_file": "README.md", "source_commit": "abc1234", "protocol": p, "n_runs": 5,
                          "epochs": 240, "notes": ""} for i, (m, v, p) in enumerate(rows)])


# ----------------------------------------------------------------------------- the published file as data
@pytest.fixture(scope="module")
def pub() -> pd.DataFrame:
    table = published()
    assert table is not None, "results/paper/published.csv is missing"
    return table


def test_every_published_row_names_its_source_and_a_protocol(pub):
    for col in ("dataset", "teacher", "student", "method", "source_repo", "source_file", "source_commit"):
        assert (pub[col].str.strip() != "").all(), col
    assert set(pub["protocol"]) <= set(PROTOCOLS)
    assert pub["source_repo"].str.fullmatch(r"[\w.-]+/[\w.-]+").all()  # owner/name, as GitHub spells it
    assert pub["top1"].between(0, 100).all() and (pub["std"].dropna() > 0).all()
    assert not pub.duplicated(["dataset", "teacher", "student", "method", "source_repo"]).any()


def test_architectures_are_spelled_as_the_zoo_spells_them(pub):
    """A name the zoo has is written exactly so; a name it lacks (MobileNetV1, ResNet152) matches no zoo name
    however spelled, and its rows say that it is not in the zoo. Every CIFAR architecture is in the zoo."""
    zoo = set(available_models())
    squash = {name.replace("_", "").lower(): name for name in zoo}
    for arch in set(pub["teacher"]) | set(pub["student"]):
        if arch not in zoo:
            assert arch.replace("_", "").replace("-", "").lower() not in squash, arch
            rows = pub[(pub["teacher"] == arch) | (pub["student"] == arch)]
            assert rows["notes"].str.contains(f"{arch} is not in this project's zoo").all(), arch
    cifar = pub[pub["dataset"] == "cifar100"]
    assert set(cifar["teacher"]) | set(cifar["student"]) <= zoo


def test_methods_we_have_carry_our_names(pub):
    """A published method, or the base of a `+` label, that names a method of ours is spelled as ours."""
    ours = {m.lower(): m for m in available_methods()}
    for method in set(pub["method"]):
        for part in method.split("+"):
            assert part == part.lower() and (part not in ours or ours[part] == part), method


def test_the_crd_table_has_its_13_pairs_and_each_method_once(pub):
    crd = pub[pub["source_repo"] == "HobbitLong/RepDistiller"]
    pairs = crd.groupby(["teacher", "student"]).size()
    assert len(pairs) == 13
    same = ["teacher", "student", "kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "nst", "crd"]
    for (teacher, student), methods in crd.groupby(["teacher", "student"])["method"]:
        assert set(methods) - {"fsp"} == set(same), (teacher, student)
    assert pairs.sum() == 7 * 15 - 1 + 6 * 14  # FSP: same-family pairs only, N/A for wrn_40_2 -> wrn_40_1
    assert set(crd["protocol"]) == {"last"} and crd["n_runs"].isna().all()  # last epoch; runs not stated
    assert crd.set_index(["teacher", "student", "method"]).loc[("resnet50c", "vgg8", "crd"), "top1"] == 74.30


def test_the_dkd_table_keeps_only_cells_found_in_stored_text(pub):
    """11 DKD pairs (best epoch, mean of 5); OFD and ReviewKD only on the six pairs their reprint gives: the DKD
    paper's other cells were not found in any stored source and are left out."""
    dkd = pub[(pub["source_repo"] == "megvii-research/mdistiller") & (pub["dataset"] == "cifar100")]
    assert len(dkd[dkd["method"] == "dkd"]) == 11 and set(dkd["n_runs"].dropna()) == {5}
    cifar = pub[pub["dataset"] == "cifar100"]
    for method in ("ofd", "reviewkd"):
        pairs = set(zip(*[cifar.loc[cifar["method"] == method, c] for c in ("teacher", "student")]))
        assert len(pairs) == 6 and ("resnet110", "resnet32") not in pairs and ("vgg13", "vgg8") not in pairs


def test_mlkd_rows_record_their_longer_schedules(pub):
    mlkd = pub[pub["method"].isin(["mlkd", "mlkd+ls"])].set_index(["teacher", "student", "method"])["epochs"]
    assert len(mlkd) == 28 and set(mlkd) == {480, 960}
    assert mlkd[("resnet32x4", "shufflenetv2", "mlkd")] == 960 and mlkd[("resnet32x4", "resnet8x4", "mlkd+ls")] == 480


def test_the_crd_benchmark_reads_one_number_per_cell_first_source_first():
    paper = benchmark_paper().set_index(["teacher", "student", "method"])
    assert not paper.index.duplicated().any() and len(paper.index.droplevel("method").unique()) == 13
    assert paper.loc[("resnet56", "resnet20", "kd"), "paper_top1"] == 70.66  # CRD's, not a reprint
    assert paper.loc[("wrn_40_2", "wrn_40_1", "dist"), "paper_top1"] == 74.43  # DIST's README before WTTM's rerun
    assert paper.loc[("resnet32x4", "resnet8x4", "dkd"), "paper_protocol"] == "best"


# ----------------------------------------------------------------------------- the comparison on numbers
def test_a_protocol_reads_best_last_or_the_median_of_final_models():
    best, last = [72.0, 72.4, 73.1], [71.0, 71.9, 71.2]
    assert summary(best, last, "best") == ("best_top1 mean", pytest.approx(72.5), pytest.approx(0.5567764, abs=1e-6))
    assert summary(best, last, "last")[:2] == ("last_top1 mean", pytest.approx(71.366667, abs=1e-6))
    assert summary(best, last, "median")[:2] == ("last_top1 median", 71.2)
    assert summary([70.0], [69.0], "best")[2] == 0.0  # one run: no spread
    with pytest.raises(ValueError, match="protocol"):
        summary(best, last, "mean")


@pytest.mark.parametrize("diff, std, n, expected", [
    (1.0, 0.2, 3, "off"),      # band max(0.4, 0.5) = 0.5
    (0.3, 0.2, 3, "within"),
    (-0.6, 0.2, 3, "off"),     # either side
    (0.7, 0.4, 3, "within"),   # band 2 · 0.4 = 0.8
    (0.9, 0.4, 3, "off"),
    (0.45, 0.0, 1, "within"),  # one run: 0.5
    (0.55, 0.0, 1, "off"),
])
def test_the_band_is_two_stds_at_least_half_a_point(diff, std, n, expected):
    assert flag(diff, tolerance(std, n)) == expected


def test_a_cell_a_point_off_is_flagged_and_one_0_3_off_is_not():
    """Three kd seeds at 71.46, 71.66, 71.86 (mean 71.66, std 0.2 exactly): against 70.66 (1.0 off) flagged,
    against 71.36 (0.3 off) within; the cell gets a row per published number."""
    runs = pd.DataFrame([_run(f"kd{i}", "kd", b, b - 1.0) for i, b in enumerate((71.46, 71.66, 71.86))])
    table = benchmark(runs, _published(("kd", 70.66, "best"), ("kd", 71.36, "best")), "best")
    rows = table.set_index("published")
    assert list(rows["n"]) == [3, 3] and set(rows["statistic"]) == {"best_top1 mean"}
    assert rows.loc[70.66, "measured_std"] == pytest.approx(0.2) and rows.loc[70.66, "tolerance"] == pytest.approx(0.5)
    assert rows.loc[70.66, "diff"] == pytest.approx(1.0) and rows.loc[70.66, "flag"] == "off"
    assert rows.loc[71.36, "diff"] == pytest.approx(0.3) and rows.loc[71.36, "flag"] == "within"
    assert set(rows["source"]) == {"src/0 README.md@abc1234", "src/1 README.md@abc1234"}


def test_each_published_number_is_compared_under_its_own_protocol():
    runs = pd.DataFrame([_run("a", "kd", 72.0, 71.0), _run("b", "kd", 73.0, 71.6), _run("c", "kd", 74.0, 71.2)])
    table = benchmark(runs, _published(("kd", 73.0, "best"), ("kd", 71.0, "last"), ("kd", 71.0, "median")), "best")
    got = {r.protocol: (r.statistic, round(r.measured, 6)) for r in table.itertuples()}
    assert got == {"best": ("best_top1 mean", 73.0), "last": ("last_top1 mean", 71.266667),
                   "median": ("last_top1 median", 71.2)}


def test_cells_with_only_runs_or_only_a_published_number_are_kept():
    runs = pd.DataFrame([_run("a", "sp", 70.0, 69.5)])
    table = benchmark(runs, _published(("crd", 71.16, "last")), "last").set_index("method")
    assert table.loc["sp", "statistic"] == "last_top1 mean" and table.loc["sp", "measured"] == 69.5  # tables.metric
    assert table.loc["sp", "source"] == "" and math.isnan(table.loc["sp", "diff"]) and table.loc["sp", "flag"] == ""
    assert table.loc["crd", "n"] == 0 and math.isnan(table.loc["crd", "measured"]) and table.loc["crd", "flag"] == ""


def test_the_teacher_and_plain_student_rows_come_from_the_runs_the_pair_used():
    """The teacher row reads the teacher's own record (by run_id) or, for a teacher file, the accuracy measured
    when the student run began; the student row is the pair's `ce` runs on the same recipe."""
    runs = pd.DataFrame([
        _run("t0", "ce", 72.5, 72.1, teacher="-", student="resnet56"),
        _run("s0", "ce", 69.2, 68.9, teacher="-", student="resnet20"),
        _run("kd0", "kd", 70.9, 70.6, teacher_run_id="t0"),
        _run("kd1", "kd", 71.1, 70.8, teacher_run_id="-", teacher_test_top1=72.9),
    ])
    table = benchmark(runs, _published(("teacher", 72.34, "last"), ("student", 69.06, "last")), "best")
    rows = table.set_index("method")
    assert rows.loc["teacher", "n"] == 2 and rows.loc["teacher", "measured"] == pytest.approx((72.1 + 72.9) / 2)
    assert rows.loc["student", "n"] == 1 and rows.loc["student", "measured"] == 68.9
    assert rows.loc["kd", "n"] == 2 and rows.loc["kd", "published"] != rows.loc["kd", "published"]  # none published


# ----------------------------------------------------------------------------- labels
def test_labels_name_logit_standardization_dot_and_ttm():
    """`+ls` where method.logit_stand is true, `+dot` where train.optimizer is dot, `ttm` for WTTM with weighted
    false; an option an older record lacks (NaN in the flattened table) is off."""
    df = pd.DataFrame({
        "method": ["kd", "kd", "dkd", "ctkd", "mlkd", "kd", "wttm", "wttm", "wttm", "dkd"],
        "method.logit_stand": [math.nan, True, True, True, True, False, math.nan, math.nan, math.nan, math.nan],
        "method.weighted": [math.nan] * 6 + [False, True, math.nan, math.nan],
        "train.optimizer": [math.nan] * 5 + ["dot", "sgd", math.nan, math.nan, math.nan],
    })
    assert list(benchmark_labels(df)) == ["kd", "kd+ls", "dkd+ls", "ctkd+ls", "mlkd+ls", "kd+dot", "ttm", "wttm",
                                          "wttm", "dkd"]
    assert list(benchmark_labels(pd.DataFrame({"method": ["kd", "crd"]}))) == ["kd", "crd"]  # no option columns


def test_labelled_runs_meet_their_published_rows_and_dkd_keeps_its_name_at_any_beta():
    """kd+ls and ttm runs meet the published kd+ls and ttm numbers; DKD at β 2 and β 8 both meet `dkd`, as two rows
    told apart by their variant (never pooled), and logit_stand does not show as a variant: the label says it."""
    runs = pd.DataFrame([
        _run("ls", "kd", 71.5, 71.2, options={"temperature": 4.0, "logit_stand": True}),
        _run("kd", "kd", 70.7, 70.5, options={"temperature": 4.0, "logit_stand": False}),
        _run("ttm", "wttm", 71.8, 71.7, options={"gamma": 0.2, "weighted": False}),
        _run("b2", "dkd", 72.0, 71.9, options={"beta": 2.0}),
        _run("b8", "dkd", 71.0, 70.9, options={"beta": 8.0}),
        _run("dot", "kd", 71.2, 71.0, options={"temperature": 4.0}, **{"train.optimizer": "dot"}),
    ])
    pub = _published(("kd+ls", 71.43, "best"), ("ttm", 71.83, "best"), ("dkd", 71.97, "best"),
                     ("kd", 70.66, "last"), ("kd+dot", 70.9, "best"))
    table = benchmark(runs, pub, "best")
    by = {(r.method, r.variant): r for r in table.itertuples()}
    assert set(by) == {("kd+ls", ""), ("kd", ""), ("ttm", ""), ("dkd", "beta=2"), ("dkd", "beta=8"), ("kd+dot", "")}
    assert by[("kd+ls", "")].published == 71.43 and by[("kd+ls", "")].measured == 71.5
    assert by[("ttm", "")].published == 71.83 and by[("kd", "")].measured == 70.5  # kd: published as last epoch
    assert by[("dkd", "beta=2")].published == by[("dkd", "beta=8")].published == 71.97
    assert by[("kd+dot", "")].published == 70.9
