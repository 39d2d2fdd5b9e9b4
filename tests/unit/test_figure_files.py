"""Figures are files of the store like any other: written atomically with the umask's mode, and a write that the
file system refuses (a read-only folder, a full disk) is an OSError naming the figure, never its temp file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from helpers.small_disk import small_tmpfs
from oracle_kd.store.io import TEMP_SUFFIX, atomic_write_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DROP_DAC = ("setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search", "--")  # root that file modes bind, as any user
WRITE = """import sys
import numpy as np
from matplotlib.figure import Figure
from oracle_kd.errors import os_error_line
from oracle_kd.store.io import atomic_write_figure
fig = Figure(figsize=(4, 4))
fig.add_subplot().imshow(np.random.default_rng(0).random((300, 300, 3)))  # noise: a PNG that does not compress
try:
    atomic_write_figure(sys.argv[1], fig)
except OSError as exc:
    print(os_error_line(exc))
    sys.exit(3)
"""


def _temps(folder: Path) -> list[Path]:
    return list(folder.glob(f".*{TEMP_SUFFIX}"))


def _write_elsewhere(path: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Write a 200-KiB figure to `path` in a fresh process (started through `prefix`: setpriv, say); it prints
    the one line the CLI would and exits 3 if the write fails."""
    return subprocess.run([*prefix, sys.executable, "-c", WRITE, str(path)], capture_output=True, text=True,
                          timeout=120)


def test_a_figure_replaces_the_file_by_rename_with_the_umask_mode(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"an older image")
    before = path.stat().st_ino
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    old = os.umask(0o027)
    try:
        atomic_write_figure(path, fig)
    finally:
        os.umask(old)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert path.stat().st_ino != before  # a new file renamed over the old one, not the old one rewritten in place
    assert path.stat().st_mode & 0o777 == 0o640 and _temps(tmp_path) == []


def test_a_read_only_folder_names_the_figure(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    folder.chmod(0o555)
    if subprocess.run([*DROP_DAC, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop the capability that lets root write into a read-only folder here")
    try:
        done = _write_elsewhere(folder / "figure.png", DROP_DAC)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip().startswith(f"cannot use {str(folder / 'figure.png')!r}: permission denied"), done.stdout
    assert not (folder / "figure.png").exists() and _temps(folder) == []


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real file system of 64 KiB (tmpfs), for a real ENOSPC."""
    with small_tmpfs(tmp_path / "small_disk", "64k") as mnt:
        yield mnt


def test_a_full_disk_names_the_figure_and_leaves_no_temp_file(small_disk):
    path = small_disk / "figure.png"
    done = _write_elsewhere(path)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip().startswith(f"cannot use {str(path)!r}: the disk is full"), done.stdout
    assert not path.exists() and _temps(small_disk) == []
