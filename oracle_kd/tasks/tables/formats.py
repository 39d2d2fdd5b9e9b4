"""A table's cells as text, and the table as CSV and as Markdown: one formatting rule for the Markdown twin and the
HTML page, so the two show the same digits."""

from __future__ import annotations

from typing import Any

import pandas as pd


def csv_bytes(df: pd.DataFrame) -> bytes:
    """Deterministic CSV: the same table gives byte-identical files."""
    return df.to_csv(index=False, float_format="%.4f", lineterminator="\n").encode()


def cell_text(value: Any, column: str) -> str:
    """Floats to 2 decimals, p-values to 2 significant digits (one near 0.05 needs them), a missing number (NaN, or
    pandas' NA of an integer column) as ''."""
    if value is pd.NA:
        return ""
    if isinstance(value, float):
        if pd.isna(value):
            return ""
        return f"{value:.2g}" if column.startswith("p_") else f"{value:.2f}"
    return str(value)


def best_rows(df: pd.DataFrame) -> list[bool]:
    """Which rows are the best method of their cell (their `verdict` says so)."""
    if "verdict" not in df.columns:
        return [False] * len(df)
    return list(df["verdict"].astype(str).str.startswith("best"))


def to_markdown(df: pd.DataFrame, title: str) -> str:
    """A plain GitHub-flavoured Markdown table (no extra dependency), each cell's best method in bold."""
    lines = [f"# {title}", "", "| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    method = list(df.columns).index("method") if "method" in df.columns else None
    for row, is_best in zip(df.itertuples(index=False), best_rows(df)):
        cells = [cell_text(v, c) for v, c in zip(row, df.columns)]
        if is_best and method is not None:
            cells[method] = f"**{cells[method]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
