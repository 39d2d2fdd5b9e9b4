"""Where the project's data folders are: the source tree's conf/, sweeps/ and results/paper/ when the package runs
from a checkout, else the copies a wheel ships under oracle_kd/_data/ (pyproject.toml maps them there), so an
installed `oracle-kd` finds its configs, presets and the paper's numbers from any directory."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
_ROOT = PACKAGE.parent
CHECKOUT = (_ROOT / "pyproject.toml").is_file() and (_ROOT / "conf" / "config.yaml").is_file()


def _folder(in_checkout: str, shipped: str) -> Path:
    return _ROOT / in_checkout if CHECKOUT else PACKAGE / "_data" / shipped


CONF_DIR = _folder("conf", "conf")
SWEEPS_DIR = _folder("sweeps", "sweeps")
PAPER_DIR = _folder("results/paper", "paper")
