"""The store's oracle-teacher tables: one CSV per analysis under <store>/<dataset>/analysis/<teacher>/<id>/,
written by task=analyze and read back by the aggregator."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import pandas as pd

log = logging.getLogger("oracle_kd")

CSV_NAME = "oracle_teacher.csv"
SETTINGS_NAME = "analysis.json"  # not config.json: the aggregator would take the folder for a run
CONTEXT_COLUMNS = ["dataset", "split", "teacher", "teacher_source", "teacher_id", "analysis_id", "gamma",
                   "gamma_reduction", "batch_size", "temperature", "representation", "ece_bins", "n_samples",
                   "silhouette_n", "seed"]
METRIC_COLUMNS = ["top1", "ece", "confidence", "entropy_bits", "silhouette_fine", "silhouette_coarse"]
COLUMNS = CONTEXT_COLUMNS + METRIC_COLUMNS


def collect_analysis(roots: Iterable[str | Path]) -> pd.DataFrame:
    """Every analysis CSV under the roots as one table, in a deterministic order; the same analysis
    reached through two roots appears once."""
    frames = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob(CSV_NAME) if ".hydra" not in p.parts and "analysis" in p.parts):
            try:
                frames.append(pd.read_csv(path))
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
                log.warning("skipping unreadable analysis table %s (%s)", path, exc.__class__.__name__)
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(subset=["analysis_id", "gamma"], keep="first")
    keys = ["dataset", "teacher", "split", "gamma_reduction", "batch_size", "representation", "analysis_id", "gamma"]
    return df.sort_values(keys, kind="mergesort").reset_index(drop=True)
