"""How the tables name what they show: a method variant by the options that tell it apart from the others in the
same table, a run's method as published tables name it (`kd+ls`, `kd+dot`, `ttm`), a recipe by the train/ preset it
was launched from and its length, a plot by its dataset, pairs and metric. Records keep every option; a label keeps
only what a reader needs to tell two rows apart."""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from oracle_kd.config import group_options, load_train_preset
from oracle_kd.store.identity import content_hash, train_identity

SCHEDULE = ("epochs", "milestones")  # a preset run shorter or longer keeps the preset's name; the label gives its epochs
PHASES = ("chimeric_epochs", "chimeric_size", "chimeric_lr")  # a chimeric phase is named by the regime column
NO_TEACHER = "-"


# ----------------------------------------------------------------------------- method variants
def variant_key(method: dict[str, Any]) -> str:
    """Every option of a method but its name, as sorted-key JSON: what groups a method's runs into variants.
    Tables show only the options that vary (`varying_options`), never this key."""
    return json.dumps({k: v for k, v in method.items() if k != "name"}, sort_keys=True, default=str)


def _options(key: str) -> dict[str, Any]:
    """A variant key back as options; teacher and plain-student rows have no variant ('')."""
    return json.loads(key) if key else {}


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)  # lists compare by value, NaN equals NaN


def varying_options(methods: Sequence[str], options: Sequence[dict[str, Any]]) -> list[str]:
    """Per row, `key=value` for each option that takes more than one value among the rows of the same method (a
    missing option counts as a value), '' where none does: what tells a method's rows apart, nothing more."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, method in enumerate(methods):
        rows_of[method].append(i)
    out = [""] * len(options)
    for rows in rows_of.values():
        keys = sorted({k for i in rows for k in options[i]})
        varying = [k for k in keys if len({_canonical(options[i].get(k)) for i in rows}) > 1]
        for i in rows:
            out[i] = " ".join(f"{k}={_value_text(options[i].get(k))}" for k in varying)
    return out


def shown_variants(rows: pd.DataFrame) -> list[str]:
    """The `variant` column of a table: of each row's variant key, the options that vary among its method's rows."""
    return varying_options(list(rows["method"]), [_options(k) for k in rows["variant"].fillna("")])


def method_labels(df: pd.DataFrame) -> pd.Series:
    """Per run, the method's name plus `key=value` for each of its options that takes several values among that
    method's runs in `df` (e.g. `oracle gamma=0.2`), read from the flattened `method.*` columns."""
    columns = [c for c in df.columns if c.startswith("method.")]
    options = [{c.removeprefix("method."): v for c, v in zip(columns, values)}
               for values in df[columns].itertuples(index=False, name=None)]
    extra = varying_options(list(df["method"].astype(str)), options)
    return pd.Series([f"{m} {x}" if x else str(m) for m, x in zip(df["method"], extra)], index=df.index)


# ----------------------------------------------------------------------------- published-method labels
LABEL_OPTIONS = ("logit_stand", "weighted")  # method options that a benchmark label names, so no variant repeats them


def _on(value: Any) -> bool:
    """An option recorded as true; a missing option (NaN in a flattened table, None) is off."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _off(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) and not bool(value)


def benchmark_label(method: str, logit_stand: Any = None, weighted: Any = None, optimizer: Any = None) -> str:
    """A run's method as published tables name it: `ttm` for WTTM without its per-sample weight, `+ls` where the
    logits are standardised first (LSKD), `+dot` where the DOT optimizer trained it (`kd+dot`). DKD keeps `dkd`
    whatever its beta: the published DKD rows use a beta per pair too."""
    label = "ttm" if method == "wttm" and _off(weighted) else method
    if _on(logit_stand):
        label += "+ls"
    if optimizer == "dot":
        label += "+dot"
    return label


def benchmark_labels(df: pd.DataFrame) -> pd.Series:
    """`benchmark_label` of every run, read from the flattened `method.*` and `train.*` columns (an option
    that older records lack is off)."""
    def column(name: str) -> list[Any]:
        return list(df[name]) if name in df.columns else [None] * len(df)

    labels = [benchmark_label(m, ls, w, opt) for m, ls, w, opt in
              zip(df["method"], column("method.logit_stand"), column("method.weighted"), column("train.optimizer"))]
    return pd.Series(labels, index=df.index, dtype=object)


# ----------------------------------------------------------------------------- recipes
def _comparable(train: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in train.items() if k not in SCHEDULE + PHASES}


@lru_cache(maxsize=1)
def _presets() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Each train/ preset as a run's identity records its recipe (no length, no chimeric phase), in name order."""
    return tuple((name, _comparable(train_identity(load_train_preset(name)))) for name in group_options("train"))


def preset_of(train: dict[str, Any]) -> str | None:
    """The train/ preset a recorded recipe is, apart from its length: runs record the recipe, not the preset's
    name, so it is recognised by value (None: a recipe no preset gives)."""
    same = _comparable(train)
    return next((name for name, preset in _presets() if preset == same), None)


def recipe_label(train: dict[str, Any]) -> str:
    """`quick · 12 ep`, or `12 ep` for a recipe that is no preset's."""
    epochs = f"{train.get('epochs', '?')} ep"
    name = preset_of(train)
    return f"{name} · {epochs}" if name else epochs


def recipe_hash(train: dict[str, Any]) -> str:
    return content_hash(train, 6, separators=None)


def unique_recipes(labels: pd.Series, hashes: pd.Series) -> pd.Series:
    """The labels, each followed by its recipe's hash where different recipes read the same (so no table ever
    pools two recipes under one name)."""
    shared = hashes.groupby(labels).transform("nunique") > 1
    return labels.where(~shared, labels + " · " + hashes)


# ----------------------------------------------------------------------------- plots
def metric_label(metric: str) -> str:
    return f"{metric}-epoch test top-1 (%)"


def pair_text(teacher: str, student: str) -> str:
    """`resnet56→resnet20`, or `resnet8 (no teacher)`."""
    return f"{student} (no teacher)" if teacher == NO_TEACHER else f"{teacher}→{student}"


def pairs_text(pairs: Iterable[tuple[str, str]], at_most: int = 3) -> str:
    """The pairs a plot shows, listed when few (`resnet8→resnet8, resnet14→resnet8`), else counted."""
    unique = sorted(set(pairs))
    if len(unique) > at_most:
        return f"{len(unique)} teacher→student pairs"
    return ", ".join(pair_text(t, s) for t, s in unique)


def plot_title(what: str, dataset: str, pairs: Iterable[tuple[str, str]], metric: str, width: int = 90) -> str:
    """A figure's headline: what it shows, on which dataset, for which pairs, in which metric (wrapped to fit)."""
    return textwrap.fill(f"{what} on {dataset}: {pairs_text(pairs)} — {metric}", width, break_on_hyphens=False)
