"""The paper's comparison tables from the runs read (`records.read_results`): statistics over seeds, Welch tests
against each cell's best, the paper's numbers beside ours, and the console summary. Tables choose runs by what
they are, not by which sweep made them: Table 4 is every run whose teacher and student are the same
architecture, Figure 5 every teacher→student pair, the γ grid every oracle run, Table 5 the Tiny-ImageNet/ImageNet
runs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from oracle_kd.core.stats import ci95_half_width, welch_p
from oracle_kd.methods import methods_in_table_order
from oracle_kd.models import models_in_table_order
from oracle_kd.models.sfx import PLAIN_OF
from oracle_kd.paths import PAPER_DIR
from oracle_kd.store.analysis import collect_analysis
from oracle_kd.tasks.tables.labels import method_labels, metric_label, shown_variants

# Row and axis orders come from the registries (families shallow to deep; plain training, the baselines by year,
# then Oracle KD), so a new model or method needs no edit here.
ARCH_ORDER = models_in_table_order()
METHOD_ORDER = ["teacher", "student", *methods_in_table_order()]
FEATURE_NAMES = {"fitnet": "FitNet", "at": "AT", "sp": "SP"}
KED_ORDER = ["KD", "KED", *(f"{m}+{x}" for x in FEATURE_NAMES.values() for m in ("KD", "KED"))]
LARGE_DATASETS = ("tiny_imagenet", "imagenet")


# ----------------------------------------------------------------------------- statistics
def _agg(df: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    col = f"{metric}_top1"
    out = df.groupby(keys, sort=True, dropna=False)[col].agg(mean="mean", std="std", n_seeds="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


REFERENCE_ROWS = ("teacher", "student")  # a table's reference accuracies, not methods competing in the cell


def significance(stats: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """Per row: `ci95`, the half-width of the 95 % confidence interval of its mean over seeds; against the best
    method of its cell (the best itself: against the runner-up) `vs_best`, the difference of means, and
    `p_vs_best`, Welch's two-sided p; `verdict`: best, not sig. worse (p >= 0.05), worse (p < 0.05), or
    n=1, no test. Teacher and plain-student rows get an interval but take no part in the comparison."""
    out = stats.copy()
    out["ci95"] = [ci95_half_width(s, int(n)) for s, n in zip(out["std"], out["n_seeds"])]
    out["vs_best"], out["p_vs_best"], out["verdict"] = float("nan"), float("nan"), ""
    competing = out[~out["method"].isin(REFERENCE_ROWS)]
    for _, g in competing.groupby(cell, sort=False, dropna=False):
        ranked = list(g.sort_values("mean", ascending=False, kind="mergesort").index)
        for i in ranked:
            ref = ranked[1] if i == ranked[0] and len(ranked) > 1 else ranked[0]
            if i == ref:  # alone in its cell
                out.at[i, "verdict"] = "best"
                continue
            a, b = out.loc[i], out.loc[ref]
            p = welch_p(a["mean"], a["std"], int(a["n_seeds"]), b["mean"], b["std"], int(b["n_seeds"]))
            out.at[i, "vs_best"], out.at[i, "p_vs_best"] = a["mean"] - b["mean"], p
            if i == ranked[0]:
                out.at[i, "verdict"] = "best" if p == p else "best (n=1, no test)"
            else:
                out.at[i, "verdict"] = "n=1, no test" if p != p else "worse" if p < 0.05 else "not sig. worse"
    return out


def _best_variant(stats: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """Where one cell has several method variants (a γ grid, say), keep the one with the highest mean, as the
    paper's released runs did for γ ∈ {0.2, 0.5}; ties go to the first variant in sort order. `variant` then names
    the options that tell the kept variant apart from the method's other variants in this table (none: '')."""
    shown = pd.Series(shown_variants(stats), index=stats.index)
    ranked = stats.sort_values([*cell, "mean", "variant"], ascending=[True] * len(cell) + [False, True], kind="mergesort")
    best = ranked.drop_duplicates(cell, keep="first")
    best = best.assign(variant=shown[best.index])
    return best.sort_values(cell, kind="mergesort").reset_index(drop=True)


def _paper(name: str) -> pd.DataFrame | None:
    path = PAPER_DIR / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


PUBLISHED = "published"  # results/paper/published.csv: every published cell of the KD benchmarks, with its source
PUBLISHED_TYPES = {"dataset": str, "teacher": str, "student": str, "method": str, "top1": float, "std": float,
                   "source_repo": str, "source_file": str, "source_commit": str, "protocol": str, "n_runs": "Int64",
                   "epochs": "Int64", "notes": str}


def published() -> pd.DataFrame | None:
    """The published numbers (results/paper/published.csv), one row per cell of a source's table, in file order
    (the original table first, then the later ones); None where the file is missing."""
    path = PAPER_DIR / f"{PUBLISHED}.csv"
    if not path.exists():
        return None
    return pd.read_csv(path, dtype=PUBLISHED_TYPES, keep_default_na=False, na_values={"std": [""], "n_runs": [""],
                                                                                       "epochs": [""]})


def _with_paper(stats: pd.DataFrame, paper: pd.DataFrame | None, on: list[str]) -> pd.DataFrame:
    if paper is None:
        return stats
    out = stats.merge(paper, on=on, how="left")
    out["diff"] = out["mean"] - out["paper_top1"]
    return out


def _teacher_rows(df: pd.DataFrame, students: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The teacher row of a table: the CE records of the teachers these students actually used (by run_id),
    or, for teachers loaded from a file, their test accuracy measured at the start of the student run."""
    col = f"{metric}_top1"
    by_id = df.set_index("run_id")[col].to_dict()
    rows = []
    for (dataset, teacher, recipe), g in students.groupby(["dataset", "teacher", "recipe"], sort=True):
        values = {}
        for rid, measured in zip(g["teacher_run_id"], g["teacher_test_top1"]):
            key = rid if rid != "-" else f"file:{measured}"
            values[key] = by_id.get(rid, measured)
        vals = pd.Series([v for v in values.values() if v is not None], dtype=float)
        if not vals.empty:
            rows.append({"dataset": dataset, "arch": teacher, "recipe": recipe, "method": "teacher", "variant": "",
                         "mean": vals.mean(), "std": vals.std() if len(vals) > 1 else 0.0, "n_seeds": len(vals)})
    return pd.DataFrame(rows)


def _order(df: pd.DataFrame) -> pd.DataFrame:
    """Paper order for methods and architectures, alphabetical for anything else."""
    key = {"method": METHOD_ORDER, "arch": ARCH_ORDER, "teacher": ARCH_ORDER, "student": ARCH_ORDER}
    sort_cols = [c for c in ("dataset", "recipe", "method", "teacher", "student", "arch", "gamma") if c in df.columns]

    def sorter(col: pd.Series) -> pd.Series:
        order = key.get(col.name)
        if order is None:
            return col
        return col.map(lambda v: (order.index(v) if v in order else len(order), str(v))).map(lambda t: f"{t[0]:03d}{t[1]}")

    return df.sort_values(sort_cols, key=sorter, kind="mergesort").reset_index(drop=True)


# ----------------------------------------------------------------------------- the tables
def table4(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Teacher = student, long form: one row per (recipe, method, dataset, arch) cell."""
    sd = df[(df["method"] != "ce") & (df["teacher"] == df["student"]) & ~df["dataset"].isin(LARGE_DATASETS)]
    if sd.empty:
        return pd.DataFrame()
    stats = _best_variant(_agg(sd.rename(columns={"student": "arch"}), ["recipe", "method", "dataset", "arch", "variant"],
                               metric), ["recipe", "method", "dataset", "arch"])
    teachers = _teacher_rows(df, sd, metric)
    stats = pd.concat([teachers, stats], ignore_index=True) if not teachers.empty else stats
    stats = significance(stats, ["recipe", "dataset", "arch"])
    return _order(_with_paper(stats, _paper("table4"), ["method", "dataset", "arch"]))


def wide_table4(long: pd.DataFrame) -> pd.DataFrame:
    """Rows: recipe × method (teacher first); columns: '<dataset>/<arch> <stat>' for mean, std, n, paper, diff."""
    if long.empty:
        return long
    stats = [c for c in long.columns if c not in ("recipe", "method", "dataset", "arch", "variant")]
    cells = long.assign(cell=long["dataset"] + "/" + long["arch"])
    wide = cells.pivot_table(index=["recipe", "method"], columns="cell", values=stats, aggfunc="first")
    cell_order = _order(long[["dataset", "arch"]].drop_duplicates())
    ordered = [(s, f"{d}/{a}") for d, a in zip(cell_order["dataset"], cell_order["arch"]) for s in stats]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(ordered))
    wide.columns = [f"{cell} {stat}" for stat, cell in wide.columns]
    wide = wide.reset_index()
    return _order(wide)


def fig5_pairs(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every teacher→student pair of every distillation method (CIFAR-size datasets)."""
    kd = df[(df["method"] != "ce") & ~df["dataset"].isin(LARGE_DATASETS)]
    if kd.empty:
        return pd.DataFrame()
    stats = _best_variant(_agg(kd, ["recipe", "dataset", "teacher", "student", "method", "variant"], metric),
                          ["recipe", "dataset", "teacher", "student", "method"])
    stats = significance(stats, ["recipe", "dataset", "teacher", "student"])
    return _order(_with_paper(stats, _paper("fig5_pairs"), ["dataset", "teacher", "student", "method"]))


def gamma_grid(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Oracle accuracy per γ (every variant kept: this table is the grid)."""
    orc = df[df["method"] == "oracle"]
    if orc.empty:
        return pd.DataFrame()
    keys = ["recipe", "dataset", "teacher", "student", "method.gamma", "method.gamma_reduction", "train.batch_size"]
    stats = _agg(orc, keys, metric).rename(columns={"method.gamma": "gamma", "method.gamma_reduction": "gamma_reduction",
                                                     "train.batch_size": "batch_size"})
    return _order(stats)


def table5(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Tiny-ImageNet and ImageNet pairs, with the teacher rows."""
    big = df[df["dataset"].isin(LARGE_DATASETS) & (df["method"] != "ce")]
    if big.empty:
        return pd.DataFrame()
    stats = _best_variant(_agg(big, ["recipe", "dataset", "teacher", "student", "method", "variant"], metric),
                          ["recipe", "dataset", "teacher", "student", "method"])
    teachers = _teacher_rows(df, big, metric)
    if not teachers.empty:
        teachers = teachers.rename(columns={"arch": "teacher"}).assign(student=lambda t: t["teacher"])
        stats = pd.concat([teachers, stats], ignore_index=True)
    stats = significance(stats, ["recipe", "dataset", "teacher", "student"])
    return _order(_with_paper(stats, _paper("table5"), ["dataset", "teacher", "student", "method"]))


BENCHMARK_SOURCES = ("HobbitLong/RepDistiller", "megvii-research/mdistiller")  # the CRD and DKD tables


def benchmark_paper() -> pd.DataFrame | None:
    """The CIFAR-100 KD benchmark's published numbers: the pairs of the CRD and DKD tables, and per pair and
    method the first published number (the CRD table's before a later reprint or rerun), with its source and
    protocol."""
    pub = published()
    if pub is None:
        return None
    cifar = pub[pub["dataset"] == "cifar100"]
    pairs = cifar[cifar["source_repo"].isin(BENCHMARK_SOURCES)][["teacher", "student"]].drop_duplicates()
    paper = cifar.merge(pairs, on=["teacher", "student"]).drop_duplicates(["dataset", "teacher", "student", "method"])
    return paper[["dataset", "teacher", "student", "method", "top1", "source_repo", "protocol"]].rename(
        columns={"top1": "paper_top1", "source_repo": "paper_source", "protocol": "paper_protocol"})


def crd_benchmark(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The standard CIFAR-100 KD benchmark: its teacher-student pairs (those of the CRD and DKD tables in
    results/paper/published.csv) on any dataset (the paper column only on CIFAR-100), every distillation method,
    plus per pair the teacher row and the plainly trained (ce) student row. `benchmark.csv` holds every published
    number of these cells, each compared under its own protocol."""
    paper = benchmark_paper()
    if paper is None:
        return pd.DataFrame()
    pairs = paper[["teacher", "student"]].drop_duplicates()
    kd = df[df["method"] != "ce"].merge(pairs, on=["teacher", "student"])
    if kd.empty:
        return pd.DataFrame()
    keys = ["recipe", "dataset", "teacher", "student"]
    stats = _best_variant(_agg(kd, [*keys, "method", "variant"], metric), [*keys, "method"])
    cells = kd[keys].drop_duplicates()
    extra = []
    teachers = _teacher_rows(df, kd, metric)
    if not teachers.empty:
        extra.append(teachers.rename(columns={"arch": "teacher"}).merge(cells, on=["dataset", "teacher", "recipe"]))
    ce = df[df["method"] == "ce"]
    if not ce.empty:
        students = _agg(ce, ["recipe", "dataset", "student"], metric).assign(method="student", variant="")
        extra.append(students.merge(cells, on=["recipe", "dataset", "student"]))
    stats = significance(pd.concat([*extra, stats], ignore_index=True), keys)
    return _order(_with_paper(stats, paper, ["dataset", "teacher", "student", "method"]))


def _ked_label(row: pd.Series) -> str:
    """KD, KD+X (the KED paper's baselines on plain models), KED, KED+X."""
    if row["method"] == "kd":
        return "KD"
    feature = str(row.get("method.feature", "none"))
    name = "KD" if bool(row.get("method.baseline")) else "KED"
    return name if feature in ("none", "nan") else f"{name}+{FEATURE_NAMES.get(feature, feature)}"


def ked_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """KED against KD at equal parameter counts: every `ked` run (and its KD+X baselines), and the `kd` runs whose
    plain teacher → student pair is the plain counterpart of a KED pair; one cell per dataset, data regime and
    plain pair (so the MLP and CNN versions are separate cells), with intervals and Welch tests against the best."""
    ked = df[df["method"] == "ked"]
    if ked.empty:
        return pd.DataFrame()
    plain = lambda arch: PLAIN_OF.get(arch, arch)  # noqa: E731
    runs = df.assign(pair=[f"{plain(t)}->{plain(s)}" for t, s in zip(df["teacher"], df["student"])])
    runs = runs[(runs["method"] == "ked") | ((runs["method"] == "kd") & runs["pair"].isin(runs.loc[ked.index, "pair"]))]
    runs = runs.assign(method=runs.apply(_ked_label, axis=1))
    keys = ["dataset", "pair", "regime", "recipe"]
    stats = _agg(runs, [*keys, "method", "teacher", "student"], metric)
    params = runs.groupby(["dataset", "student"], dropna=False)["student_params"].first().rename("student_params")
    params = runs.groupby(["dataset", "student"], dropna=False)["student_params"].first().rename("student_params")
    stats = stats.merge(params.reset_index(), on=["dataset", "student"], how="left")
    stats = significance(stats, keys)
    order = {m: i for i, m in enumerate(KED_ORDER)}
    stats["_m"] = stats["method"].map(lambda m: order.get(m, len(order)))
    sizes = runs.groupby("regime")["dataset.train_size"].first() if "dataset.train_size" in runs else pd.Series()
    stats["_r"] = stats["regime"].map(lambda r: (0 if r == "all" else sizes.get(r, 0), "chimeric" in r))
    stats = stats.sort_values(["dataset", "pair", "_r", "recipe", "_m"], kind="mergesort")
    return stats.drop(columns=["_m", "_r"]).reset_index(drop=True)


def oracle_teacher(roots: Iterable[str | Path]) -> pd.DataFrame:
    """The oracle-teacher analyses (task=analyze) with the paper's numbers beside them: Table 1 top-1 and
    Table 3 entropy (scratch = γ 0, oracle = γ > 0) and Figure 4 silhouettes (per γ, released notebook)."""
    ana = collect_analysis(roots)
    paper = _paper("oracle_teacher")
    if ana.empty or paper is None:
        return ana
    tables_1_3 = paper[paper["gamma"].isna()]
    for metric in ("top1", "entropy_bits"):
        p = tables_1_3[tables_1_3["metric"] == metric][["dataset", "arch", "original", "oracle"]]
        p = p.rename(columns={"arch": "teacher", "original": f"paper_{metric}_scratch", "oracle": f"paper_{metric}_oracle"})
        ana = ana.merge(p, on=["dataset", "teacher"], how="left")
    fig4 = paper[paper["gamma"].notna()]
    zero = fig4.drop_duplicates("metric").assign(gamma=0.0, oracle=lambda d: d["original"])
    fig4 = pd.concat([zero, fig4], ignore_index=True).pivot_table(index=["dataset", "arch", "gamma"], columns="metric",
                                                                 values="oracle", aggfunc="first")
    fig4.columns = [f"paper_{c}_tsne_train" for c in fig4.columns]
    fig4 = fig4.reset_index().rename(columns={"arch": "teacher"})
    return ana.merge(fig4, on=["dataset", "teacher", "gamma"], how="left")


def summary_text(df: pd.DataFrame, metric: str) -> str:
    """A compact console table: mean ± std over seeds per dataset/teacher/student/method, a method's runs split by
    the options that differ among them (e.g. `oracle gamma=0.1`, `oracle gamma=2`) and, where the runs shown used
    several recipes (KD with SGD and with DOT), by recipe: never pooled."""
    if df.empty:
        return "no finished runs"
    df = df.assign(method=method_labels(df))
    regimes = ["regime"] if "regime" in df.columns and (df["regime"] != "all").any() else []  # scarce-data runs
    recipes = ["recipe"] if "recipe" in df.columns and df["recipe"].nunique() > 1 else []
    stats = _agg(df, ["dataset", *regimes, *recipes, "teacher", "student", "method"], metric)
    stats = _order(stats)
    stats[metric_label(metric)] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(stats["mean"], stats["std"])]
    cols = ["dataset", *regimes, *recipes, "teacher", "student", "method", "n_seeds", metric_label(metric)]
    return stats[cols].to_string(index=False)
