"""`task=tables` writes its PNGs as the store writes every file: through the atomic writer, with the umask's mode,
and a figure it cannot write is one line naming it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import main
from oracle_kd.store.io import TEMP_SUFFIX

FIGURES = ("fig5_pairs_digits.png", "learning_curves_digits.png")  # a kd run and its ce teacher give both


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tables_figures") / "runs"
    assert main([f"store={path}", *TINY_RUN, "method=kd"]) == 0
    return path


def tables(store: Path, results: Path) -> int:
    return main([f"store={store}", "task=tables", f"results_dir={results}"])


def test_the_figures_are_renamed_into_place_with_the_umask_mode(store, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in FIGURES:
        (results / name).write_bytes(b"an older figure")
    before = {name: (results / name).stat().st_ino for name in FIGURES}
    old = os.umask(0o027)
    try:
        assert tables(store, results) == 0
    finally:
        os.umask(old)
    for name in FIGURES:
        path = results / name
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
        assert path.stat().st_ino != before[name], name  # a new file renamed over the old, never rewritten in place
        assert path.stat().st_mode & 0o777 == 0o640, name
    assert list(results.glob(f".*{TEMP_SUFFIX}")) == []


def test_a_figure_that_cannot_be_written_is_one_line_naming_it(store, tmp_path, capsys):
    results = tmp_path / "results"
    blocker = results / FIGURES[0]
    blocker.mkdir(parents=True)  # a folder where the figure goes: the rename onto it fails
    capsys.readouterr()
    assert tables(store, results) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: cannot use {str(blocker)!r}: "), err
    assert blocker.is_dir() and list(results.glob(f".*{TEMP_SUFFIX}")) == []
