"""A store that cannot be written (a colleague's shared store): with the default config, relaunching a finished
run, task=plan and task=tables (results elsewhere) work and leave it untouched, and whatever would write to it
is one line naming the setting to change. Real file-system permissions: the store's folders and files lose
their write bits, and as root the launches run without the capabilities that let root ignore them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import main

REPO = Path(__file__).resolve().parents[2]
UNPRIVILEGED = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
KD = [*TINY_RUN, "method=kd"]


def _unprivileged() -> list[str]:
    """The prefix that runs a command bound by file modes: none for a user, setpriv dropping root's
    CAP_DAC_OVERRIDE (and CAP_DAC_READ_SEARCH) for root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("a read-only store as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE; not installed")
    probe = subprocess.run([*UNPRIVILEGED, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop CAP_DAC_OVERRIDE here: {probe.stderr.strip()}")
    return UNPRIVILEGED


def _snapshot(store: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(store)): (p.stat().st_mtime_ns, p.stat().st_size) for p in store.rglob("*")}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    """(store, prefix): a store holding a finished kd run and its auto teacher, every file and folder in it
    without write bits, and the prefix that launches are run with."""
    prefix = _unprivileged()
    store = tmp_path_factory.mktemp("shared") / "runs"
    assert main([*KD, f"store={store}"]) == 0
    paths = [store, *store.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~0o222)
    yield store, prefix
    for p in paths:
        p.chmod(p.stat().st_mode | 0o200)


def launch(prefix: list[str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python run.py <args>` from `cwd`, with the default config's Hydra folders (outputs/ there)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "ORACLE_KD_OUTPUTS"}
    return subprocess.run([*prefix, sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_finished_run_plan_and_tables_work_on_a_read_only_store(shared, tmp_path):
    store, prefix = shared
    before, work = _snapshot(store), tmp_path / "work"
    done = launch(prefix, work, *KD, f"store={store}")
    assert done.returncode == 0, done.stderr
    assert "is already finished" in done.stdout + done.stderr
    plan = launch(prefix, work, *KD, f"store={store}", "task=plan")
    assert plan.returncode == 0, plan.stderr
    assert "plan: finished" in plan.stdout
    tables = launch(prefix, work, f"store={store}", "task=tables", f"results_dir={tmp_path / 'results'}")
    assert tables.returncode == 0, tables.stderr
    assert (tmp_path / "results" / "runs.csv").read_text().count("\n") == 3  # a header, the teacher, the student
    assert _snapshot(store) == before
    assert len(list((work / "outputs").glob("*/*/*.log"))) == 3  # Hydra's folders: in the working directory


@pytest.mark.parametrize("args, parts", [
    (["method=ce", "seed=1"], ["permission denied", "point store= elsewhere"]),  # a new run
    (["hydra.run.dir={store}/hydra"], ["cannot use '{store}/hydra': permission denied", "point hydra.run.dir="]),
    (["task=tables", "results_dir={store}/results"], ["cannot use '{store}/results'", "point results_dir="]),
    (["-m", "method=ce", "seed=1", "hydra/launcher=cohort"], ["permission denied", "point store= elsewhere"]),
    (["-m", "hydra.sweep.dir={store}/sweep"], ["cannot use '{store}/sweep'", "point hydra.sweep.dir="]),
    (["task=tune"], ["tune.storage=sqlite:///{store}/optuna.db: SQLite cannot write its database: cannot use "
                     "'{store}/optuna.db': permission denied", "point tune.storage= (or tune.journal=) elsewhere"]),
], ids=["new-run", "hydra-folder", "results", "cohort-new-run", "sweep-folder", "tune-sqlite"])
def test_writing_to_a_read_only_store_is_one_line_naming_the_setting(shared, tmp_path, args, parts):
    store, prefix = shared
    before = _snapshot(store)
    done = launch(prefix, tmp_path, *(a.format(store=store) for a in args), *TINY_RUN, f"store={store}")
    assert done.returncode == 2
    (line,) = [ln for ln in done.stderr.splitlines() if not ln.startswith("[")]  # besides a multirun's [HYDRA] log
    assert line.startswith("error: ") and all(part.format(store=store) in line for part in parts), line
    assert _snapshot(store) == before
