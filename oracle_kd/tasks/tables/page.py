"""results/index.html: every table and figure that task=tables wrote, on one self-contained page (styles and
script inline, figures as data: URIs, no address outside the file), so it can be mailed, archived or opened
offline and still show everything. Column headers sort their table on click; each table says what it shows."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from oracle_kd.store.io import atomic_write_bytes
from oracle_kd.tasks.tables.formats import best_rows, cell_text
from oracle_kd.tasks.tables.plots import Figure

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em 2em; color: #1b1b1b; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 .2em; } h2 { font-size: 1.2em; margin: 1.6em 0 .2em; }
nav a { margin-right: 1em; } .what { margin: .2em 0; } .file { color: #666; font-size: .9em; margin: 0 0 .5em; }
.scroll { overflow-x: auto; max-height: 36em; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: .25em .6em; border-bottom: 1px solid #eee; white-space: nowrap; text-align: left; }
th { position: sticky; top: 0; background: #f3f5f8; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.best td { font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #444; font-size: .9em; } footer { margin-top: 2em; color: #666; }
"""

# Sorting: numbers by their data-v value, text in natural order, empty cells last either way. On load the page
# counts its tables and decoded figures into the footer (and body[data-rendered], which the tests read).
SCRIPT = """
function sortBy(th) {
  const table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
  const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
  for (const h of th.parentNode.cells) h.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  const key = row => { const c = row.cells[col]; return c.dataset.v !== undefined ? Number(c.dataset.v) : c.textContent; };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    if (typeof x === "number" && typeof y === "number") return (x - y) * dir;
    return String(x).localeCompare(String(y), undefined, {numeric: true}) * dir;
  });
  body.append(...rows);
}
document.querySelectorAll("table.sortable th").forEach(th => th.addEventListener("click", () => sortBy(th)));
window.addEventListener("load", () => {
  const tables = Array.from(document.querySelectorAll("table")), images = Array.from(document.images);
  const shown = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.rendered = JSON.stringify({tables: tables.length, rows: tables.map(t => t.tBodies[0].rows.length),
    images: images.map(i => i.naturalWidth)});
  document.getElementById("check").textContent = `${tables.length} tables and ${shown} of ${images.length} figures shown.`;
});
"""


@dataclass(frozen=True)
class Section:
    """One table of the page (or, with no table, a group of figures): its file name stem, title and one line
    saying what it shows."""

    name: str
    title: str
    what: str
    table: pd.DataFrame | None = None
    figures: tuple[Figure, ...] = ()
    folded: bool = False  # behind a <details> (the long runs table)


def _cell(value: Any, column: str) -> str:
    """A <td>: numbers right-aligned and sorted by value (`data-v`), the rest as text."""
    text = escape(cell_text(value, column))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value):
        return f'<td class="num" data-v="{value!r}">{text}</td>'
    return f'<td class="num">{text}</td>' if number else f"<td>{text}</td>"


def table_html(df: pd.DataFrame) -> str:
    """A sortable <table>; each cell's best method's row in bold, as in the Markdown twin."""
    head = "".join(f'<th title="sort by {escape(str(c))}">{escape(str(c))}</th>' for c in df.columns)
    rows = []
    for values, best in zip(df.itertuples(index=False, name=None), best_rows(df)):
        cells = "".join(_cell(v.item() if hasattr(v, "item") else v, str(c)) for v, c in zip(values, df.columns))
        rows.append(f'<tr class="best">{cells}</tr>' if best else f"<tr>{cells}</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def figure_html(figure: Figure) -> str:
    """The PNG embedded as a data: URI, its title as alt text and caption."""
    data = base64.b64encode(figure.path.read_bytes()).decode()
    title = escape(" ".join(figure.title.split()))  # the PNG's title on one line
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{title}">'
            f"<figcaption>{title} ({escape(figure.path.name)})</figcaption></figure>")


def section_html(s: Section) -> str:
    parts = [f'<section id="{escape(s.name)}"><h2>{escape(s.title)}</h2><p class="what">{escape(s.what)}</p>']
    if s.table is not None:
        parts.append(f'<p class="file">{escape(s.name)}.csv · {len(s.table)} rows · click a column header to sort</p>')
        table = f'<div class="scroll">{table_html(s.table)}</div>'
        parts.append(f"<details><summary>show the table</summary>{table}</details>" if s.folded else table)
    parts += [figure_html(f) for f in s.figures]
    return "".join(parts) + "</section>"


def page_html(intro: str, sections: Sequence[Section]) -> str:
    nav = "".join(f'<a href="#{escape(s.name)}">{escape(s.name)}</a>' for s in sections)
    body = "\n".join(section_html(s) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>oracle-kd results</title>'
            f"<style>{STYLE}</style></head>\n<body><header><h1>oracle-kd results</h1><p>{escape(intro)}</p>"
            f'<nav>{nav}</nav></header>\n{body}\n<footer id="check">{len(sections)} sections.</footer>'
            f"<script>{SCRIPT}</script></body></html>\n")


def write_page(path: Path, intro: str, sections: Sequence[Section]) -> Path:
    """Write the page through the atomic writer (a reader sees the old page or the new one, never half)."""
    atomic_write_bytes(path, page_html(intro, sections).encode())
    return path
