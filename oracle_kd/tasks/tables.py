"""Aggregator: every result.json in the run store → the paper's comparison tables (CSV, Markdown, PNG).

Everything a table shows is derived from run records; the only numbers typed in by hand are the
paper's, in results/paper/*.csv. Tables choose runs by what they are, not by which sweep made them:
Table 4 is every run whose teacher and student are the same architecture, Figure 5 every
teacher→student pair, the γ grid every oracle run, Table 5 the Tiny-ImageNet/ImageNet runs.
CSV output is deterministic: the same records give byte-identical files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from oracle_kd.config import RunConfig
from oracle_kd.core.stats import ci95_half_width, welch_p
from oracle_kd.errors import choice, reason
from oracle_kd.models.sfx import PLAIN_OF
from oracle_kd.paths import PAPER_DIR
from oracle_kd.store import record
from oracle_kd.store.analysis import collect_analysis
from oracle_kd.store.identity import content_hash
from oracle_kd.store.io import atomic_write_bytes, atomic_write_figure, read_json, read_metrics
from oracle_kd.tasks.registry import register_task

log = logging.getLogger("oracle_kd")

METRICS = ("best", "last")
ARCH_ORDER = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
              "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
              "resnet18c", "resnet50c", "mobilenetv2", "shufflenetv1", "shufflenetv2", "resnet18", "resnet34",
              "resnet50", "resnet101"]
METHOD_ORDER = ["teacher", "student", "ce", "dkd", "at", "fitnet", "sp", "kd", "sad", "oracle", "ked"]
FEATURE_NAMES = {"fitnet": "FitNet", "at": "AT", "sp": "SP"}
KED_ORDER = ["KD", "KED", *(f"{m}+{x}" for x in FEATURE_NAMES.values() for m in ("KD", "KED"))]
LARGE_DATASETS = ("tiny_imagenet", "imagenet")


@dataclass
class Problem:
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


# ----------------------------------------------------------------------------- reading
def _variant(method: dict[str, Any]) -> str:
    """The method's options other than its name, e.g. 'alpha=1.0 ce_weight=1.0 gamma=0.5 ...'."""
    return " ".join(f"{k}={v}" for k, v in sorted(method.items()) if k != "name")


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, list):
        out[prefix] = json.dumps(obj)
    else:
        out[prefix] = obj


def _regime(sem: dict[str, Any]) -> str:
    """The data a student learned from: all of the training split, or `n=<train_size>`, plus a chimeric phase."""
    size, train = sem.get("dataset", {}).get("train_size"), sem.get("train", {})
    out = f"n={size}" if size else "all"
    if train.get("chimeric_epochs"):
        out += f" + chimeric {train['chimeric_epochs']}ep x {train['chimeric_size']}"
    return out


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    sem = rec["semantic"]
    train = sem.get("train", {})
    teacher = sem.get("teacher") or {}
    info = rec.get("teacher_info") or {}
    row: dict[str, Any] = {
        "run_id": rec["run_id"], "dataset": rec["dataset"], "method": rec["method"],
        "teacher": rec.get("teacher") or "-", "student": rec["student"], "seed": rec["seed"],
        "variant": _variant(sem.get("method", {})), "regime": _regime(sem), "student_params": rec.get("student_params"),
        "recipe": f"{train.get('epochs', '?')}ep-{content_hash(train, 6, separators=None)}",
        "best_top1": rec["best_top1"], "last_top1": rec["last_top1"],
        "best_top5": rec.get("best_top5"), "last_top5": rec.get("last_top5"), "best_epoch": rec.get("best_epoch"),
        "epochs": rec.get("epochs"), "wall_time_s": rec.get("wall_time_s"),
        "train_images_per_s": rec.get("train_images_per_s"), "extra_params": rec.get("extra_params"),
        "teacher_run_id": teacher.get("run_id", "-"), "teacher_source": teacher.get("source", "-"),
        "teacher_test_top1": (info.get("test") or {}).get("top1"),
    }
    flat: dict[str, Any] = {}
    _flatten("", {k: v for k, v in sem.items() if k != "teacher"}, flat)
    row.update({k: v for k, v in flat.items() if k not in ("student", "seed")})
    return row


def _read_record(folder: Path, problems: list[Problem]) -> tuple[dict[str, Any] | None, str | None]:
    """A folder's finished record, or None with a Problem saying what the folder is and what to run."""
    rec, problem = record.read_result(folder)
    if problem is not None:
        problems.append(Problem(str(folder / record.RESULT), f"damaged: {record.RESULT} {problem}; relaunch the run "
                                "to rebuild it from last.pt"))
    elif rec is None and (folder / record.FAILURE).exists():
        try:
            error = read_json(folder / record.FAILURE).get("error", "?")
        except (OSError, ValueError, AttributeError):
            error = "failure.json is unreadable"
        problems.append(Problem(str(folder), f"failed: {error}; fix the cause and relaunch to retry it"))
    elif rec is None:
        problems.append(Problem(str(folder), "unfinished run (no result.json): relaunch it to resume"))
    elif (why := record.files_problem(folder, rec)) is not None:
        problems.append(Problem(str(folder), f"damaged: {why}; not counted: relaunch the run to rebuild it from "
                                "last.pt"))
        return None, why
    return rec, problem


def read_results(roots: Iterable[str | Path]) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per valid, finished record under the roots, and one Problem per bad or unfinished run.

    A run folder is any folder holding a config.json, metrics.jsonl, last.pt or result.json."""
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            problems.append(Problem(str(root), "no such folder"))
            continue
        folders = sorted({p.parent for name in (record.RESULT, record.CONFIG, record.CHECKPOINT)
                          for p in root.rglob(name) if ".hydra" not in p.parts})
        for folder in folders:
            rec, problem = _read_record(folder, problems)
            if rec is None or rec["run_id"] in seen:  # unusable, or the same run reached through two roots
                continue
            try:
                row = _row(rec)
            except (AttributeError, TypeError, KeyError, ValueError) as exc:
                problems.append(Problem(str(folder / record.RESULT), f"malformed record ({reason(exc)})"))
                continue
            seen.add(rec["run_id"])
            rows.append({**row, "folder": str(folder)})
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["dataset", "teacher", "student", "method", "variant", "recipe", "seed", "run_id"],
                            kind="mergesort").reset_index(drop=True)
    return df, problems


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
    """Where one cell has several method variants (a γ grid, say), keep the one with the highest mean,
    as the paper's released runs did for γ ∈ {0.2, 0.5}; ties go to the first variant in sort order."""
    ranked = stats.sort_values([*cell, "mean", "variant"], ascending=[True] * len(cell) + [False, True], kind="mergesort")
    return ranked.drop_duplicates(cell, keep="first").sort_values(cell, kind="mergesort").reset_index(drop=True)


def _paper(name: str) -> pd.DataFrame | None:
    path = PAPER_DIR / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


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


def crd_benchmark(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The standard CIFAR-100 KD benchmark: its teacher-student pairs (those of results/paper/crd_benchmark.csv) on
    any dataset (the paper column only on CIFAR-100), every distillation method, plus per pair the teacher row and
    the plainly trained (ce) student row."""
    paper = _paper("crd_benchmark")
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
    stats = stats.merge(params.reset_index(), on=["dataset", "student"], how="left")
    stats = significance(stats, keys)
    order = {m: i for i, m in enumerate(KED_ORDER)}
    stats["_m"] = stats["method"].map(lambda m: order.get(m, len(order)))
    sizes = runs.groupby("regime")["dataset.train_size"].first() if "dataset.train_size" in runs else pd.Series()
    stats["_r"] = stats["regime"].map(lambda r: (0 if r == "all" else sizes.get(r, 0), "chimeric" in r))
    stats = stats.sort_values(["dataset", "pair", "_r", "recipe", "_m"], kind="mergesort")
    return stats.drop(columns=["_m", "_r"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- writing
def _metric_label(metric: str) -> str:
    return f"{metric}-epoch test top-1 (%)"


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, float_format="%.4f", lineterminator="\n").encode()


def to_markdown(df: pd.DataFrame, title: str) -> str:
    """A plain GitHub-flavoured Markdown table (no extra dependency)."""
    def fmt(v: Any, column: str) -> str:
        if isinstance(v, float):
            if pd.isna(v):
                return ""
            return f"{v:.2g}" if column.startswith("p_") else f"{v:.2f}"  # a p-value near 0.05 needs its digits
        return str(v)

    lines = [f"# {title}", "", "| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    best = list(df["verdict"].astype(str).str.startswith("best")) if "verdict" in df.columns else [False] * len(df)
    for row, is_best in zip(df.itertuples(index=False), best):
        cells = [fmt(v, c) for v, c in zip(row, df.columns)]
        if is_best and "method" in df.columns:  # the cell's best method in bold
            cells[list(df.columns).index("method")] = f"**{cells[list(df.columns).index('method')]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save(fig: Any, path: Path) -> Path:
    """Write `fig` as a PNG through the atomic writer (a killed or failed write leaves no torn image, and an error
    names the file), then close it: pyplot keeps every figure it made until then."""
    import matplotlib.pyplot as plt

    try:
        atomic_write_figure(path, fig)
    finally:
        plt.close(fig)
    return path


def _plot_fig5(fig5: pd.DataFrame, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dataset, d in fig5.groupby("dataset", sort=True):
        students = [s for s in ARCH_ORDER if s in set(d["student"])] + sorted(set(d["student"]) - set(ARCH_ORDER))
        fig, axes = plt.subplots(1, len(students), figsize=(4 * len(students), 3.6), squeeze=False)
        for ax, student in zip(axes[0], students):
            g = d[d["student"] == student]
            teachers = [t for t in ARCH_ORDER if t in set(g["teacher"])] + sorted(set(g["teacher"]) - set(ARCH_ORDER))
            for method in [m for m in METHOD_ORDER if m in set(g["method"])]:
                m = g[g["method"] == method].set_index("teacher").reindex(teachers)
                ax.errorbar(range(len(teachers)), m[f"{metric}_top1_mean"], yerr=m[f"{metric}_top1_std"], marker="o",
                            capsize=3, label=method)
            ax.set_xticks(range(len(teachers)), teachers, rotation=30)
            ax.set_title(f"student {student}")
            ax.set_xlabel("teacher")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(_metric_label(metric))
        axes[0][-1].legend(fontsize=8)
        fig.suptitle(f"Figure 5 pairs — {dataset}")
        fig.tight_layout()
        _save(fig, path.with_name(f"{path.stem}_{dataset}.png"))


def _plot_gamma(grid: pd.DataFrame, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (dataset, teacher, student, red), g in grid.groupby(["dataset", "teacher", "student", "gamma_reduction"], sort=True):
        g = g.sort_values("gamma")
        ax.errorbar(g["gamma"], g[f"{metric}_top1_mean"], yerr=g[f"{metric}_top1_std"], marker="o", capsize=3,
                    label=f"{dataset} {teacher}→{student} ({red})")
    ax.set_xlabel("γ")
    ax.set_ylabel(_metric_label(metric))
    ax.set_title("Oracle KD: student accuracy vs γ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def learning_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Test top-1 per epoch of every finished run (from its metrics.jsonl), keyed like the runs table."""
    parts = []
    for run in df.itertuples(index=False):
        rows = read_metrics(Path(run.folder) / record.METRICS)
        parts += [{"run_id": run.run_id, "epoch": r["epoch"], "test_top1": r["test_top1"]} for r in rows
                  if isinstance(r.get("test_top1"), (int, float))]
    if not parts:
        return pd.DataFrame()
    keys = df[["run_id", "dataset", "recipe", "teacher", "student", "method", "seed"]]
    return pd.DataFrame(parts).merge(keys, on="run_id")


def _plot_curves(curves: pd.DataFrame, out: Path) -> list[Path]:
    """learning_curves_<dataset>.png: test top-1 vs epoch, a panel per teacher→student pair and recipe, a line
    per method (mean over seeds) with a ±1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for dataset, d in curves.groupby("dataset", sort=True):
        panels = sorted(d.groupby(["recipe", "teacher", "student"]).groups)
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
        for ax, (recipe, teacher, student) in zip(axes[0], panels):
            g = d[(d["recipe"] == recipe) & (d["teacher"] == teacher) & (d["student"] == student)]
            for method in [m for m in METHOD_ORDER if m in set(g["method"])] + sorted(set(g["method"]) - set(METHOD_ORDER)):
                per_epoch = g[g["method"] == method].groupby("epoch")["test_top1"]
                mean, std = per_epoch.mean(), per_epoch.std().fillna(0.0)
                (line,) = ax.plot(mean.index, mean.values, label=f"{method} (n={per_epoch.count().max()})")
                ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            ax.set_title(f"{teacher}→{student} ({recipe})" if teacher != "-" else f"{student} ({recipe})", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("test top-1 (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, out / f"learning_curves_{dataset}.png"))
    return paths


def _write(out: Path, name: str, df: pd.DataFrame, title: str) -> list[Path]:
    atomic_write_bytes(out / f"{name}.csv", _csv(df))
    atomic_write_bytes(out / f"{name}.md", to_markdown(df, title).encode())
    return [out / f"{name}.csv", out / f"{name}.md"]


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


def build_tables(roots: Iterable[str | Path], results_dir: str | Path, metric: str = "best",
                 plots: bool = True) -> dict[str, pd.DataFrame]:
    """Read every record under the roots and write results/*.csv (+ .md, .png). Returns the tables."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}")
    roots = list(roots)
    out = Path(results_dir)
    analysis = oracle_teacher(roots)
    tables: dict[str, pd.DataFrame] = {}
    if not analysis.empty:
        tables["oracle_teacher"] = analysis
        _write(out, "oracle_teacher", analysis, "Oracle teacher teacher(x*(γ)): Tables 1-3, Figure 4")
    df, problems = read_results(roots)
    for p in problems:
        log.warning("skipped %s", p)
    label = _metric_label(metric)
    if df.empty:
        tables["runs"] = df
        log.warning("no finished runs under %s", ", ".join(map(str, roots)))
        return tables
    full = df["regime"] == "all"  # the paper's tables and the curves: full-data runs only; scarce data: the ked table
    curves = learning_curves(df[full]) if plots else pd.DataFrame()
    df = tables["runs"] = df.drop(columns="folder")  # paths stay out of the tables
    atomic_write_bytes(out / "runs.csv", _csv(df))
    named = {"mean": f"{metric}_top1_mean", "std": f"{metric}_top1_std"}
    paper_runs = df[full.to_numpy()]
    t4 = table4(paper_runs, metric).rename(columns=named)
    builders = {"table4_long": (t4, f"Table 4 (teacher = student), long form — {label}"),
                "table4": (wide_table4(t4), f"Table 4 (teacher = student) — {label}"),
                "fig5_pairs": (fig5_pairs(paper_runs, metric), f"Figure 5: teacher-student pairs — {label}"),
                "gamma_grid": (gamma_grid(paper_runs, metric), f"Oracle γ grid — {label}"),
                "table5": (table5(paper_runs, metric), f"Table 5: Tiny-ImageNet / ImageNet — {label}"),
                "crd_benchmark": (crd_benchmark(paper_runs, metric),
                                  f"The CIFAR-100 KD benchmark (CRD/mdistiller pairs) — {label}"),
                "ked": (ked_table(df, metric), f"KED against KD at equal parameter counts — {label}")}
    for name, (table, title) in builders.items():
        if table.empty:
            continue
        table = table.rename(columns=named)
        tables[name] = table
        _write(out, name, table, title)
    if plots:
        if "fig5_pairs" in tables:
            _plot_fig5(tables["fig5_pairs"], out / "fig5_pairs.png", metric)
        if "gamma_grid" in tables:
            _plot_gamma(tables["gamma_grid"], out / "gamma_grid.png", metric)
        if not curves.empty:
            _plot_curves(curves, out)
    return tables


def _method_labels(df: pd.DataFrame) -> pd.Series:
    """The method's name, plus `key=value` for each of its options that takes several values in `df`."""
    labels = df["method"].astype(str).copy()
    for name, runs in df.groupby("method", sort=False):
        varying = [c for c in runs.columns if c.startswith("method.") and runs[c].astype(str).nunique() > 1]
        for c in varying:
            labels[runs.index] += " " + c.removeprefix("method.") + "=" + runs[c].map(lambda v: f"{v:g}" if
                                                                                    isinstance(v, float) else str(v))
    return labels


def summary_text(df: pd.DataFrame, metric: str) -> str:
    """A compact console table: mean ± std over seeds per dataset/teacher/student/method, a method's runs split by
    the options that differ among them (e.g. `oracle gamma=0.1`, `oracle gamma=2`), never pooled."""
    if df.empty:
        return "no finished runs"
    df = df.assign(method=_method_labels(df))
    regimes = ["regime"] if "regime" in df.columns and (df["regime"] != "all").any() else []  # scarce-data runs
    stats = _agg(df, ["dataset", *regimes, "teacher", "student", "method"], metric)
    stats = _order(stats)
    stats[_metric_label(metric)] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(stats["mean"], stats["std"])]
    cols = ["dataset", *regimes, "teacher", "student", "method", "n_seeds", _metric_label(metric)]
    return stats[cols].to_string(index=False)


@dataclass
class TablesConfig:
    """Which accuracy the tables show (best epoch, as the paper, or last epoch) and extra folders of run
    records to read besides the store."""

    metric: str = "best"
    roots: list[str] = field(default_factory=list)

    def validate(self) -> None:
        choice("tables.metric", self.metric, METRICS)


@register_task("tables", "aggregate the store into the paper's tables (CSV, Markdown, PNG) under results/",
               section="tables", config=TablesConfig)
def tables_task(rc: RunConfig) -> dict[str, pd.DataFrame]:
    return tables([rc.store, *rc.tables.roots], rc.results_dir, rc.tables.metric)


def tables(roots: Iterable[str | Path], results_dir: str | Path, metric: str = "best") -> dict[str, pd.DataFrame]:
    """Write the tables, print the summary and where the files are."""
    roots = list(roots)
    built = build_tables(roots, results_dir, metric)
    print(summary_text(built["runs"], metric), flush=True)
    if len(built) > 1:
        print(f"\nwrote {', '.join(k for k in built if k != 'runs')} (+ runs.csv, .md, .png) to {results_dir}/", flush=True)
    return built
