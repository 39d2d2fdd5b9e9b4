"""Shared fixtures and each xdist worker's share of the CPUs. Importable helpers (dataset writers in the real
on-disk formats, the test servers, the tiny model) are the `helpers` package in tests/helpers/."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

from helpers.tiny_net import TinyNet


def pytest_configure(config: pytest.Config) -> None:
    """One share of the CPUs per xdist worker. PyTorch's default (one OpenMP thread per core in every worker)
    oversubscribes the cores, and spinning OpenMP threads then make the unit tests several times slower. The
    environment variable carries the share to the subprocesses that tests start."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    _outputs_elsewhere(config)


def _outputs_elsewhere(config: pytest.Config) -> None:
    """Hydra's outputs/ and multirun/ folders (conf/config.yaml) go under $ORACLE_KD_OUTPUTS, here a temporary
    folder of the session, so that launches without their own hydra.run.dir do not fill the working directory.
    The xdist workers and the subprocesses that tests start inherit it; the process that made it removes it."""
    if "PYTEST_XDIST_WORKER" in os.environ and "ORACLE_KD_OUTPUTS" in os.environ:  # the controller's folder
        return
    folder = tempfile.mkdtemp(prefix="oracle-kd-outputs-")
    os.environ["ORACLE_KD_OUTPUTS"] = folder
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


@pytest.fixture(autouse=True)
def _keep_the_thread_share():
    """A test that runs with `hardware.threads=N` sets torch's thread count for the whole worker; the next
    tests get the worker's share back."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def tiny_net():
    def make(num_classes: int = 5, in_channels: int = 1, seed: int = 0) -> TinyNet:
        torch.manual_seed(seed)
        return TinyNet(num_classes, in_channels)

    return make


REAL_SERVERS = {"SLURM cluster": lambda nodeid: "test_slurm.py" in nodeid,
                "PostgreSQL server": lambda nodeid: "test_postgres.py" in nodeid or "[postgresql" in nodeid}


def pytest_terminal_summary(terminalreporter) -> None:
    """One line saying whether the tests against real servers ran (passed) or were skipped: a quiet run
    lists only skips, and CI must show that the SLURM and PostgreSQL tests did run."""
    parts = []
    for name, match in REAL_SERVERS.items():
        outcomes = {}
        for outcome in ("passed", "failed", "error", "skipped"):
            ids = {r.nodeid for r in terminalreporter.stats.get(outcome, []) if match(getattr(r, "nodeid", ""))}
            if ids:
                outcomes[outcome] = len(ids)
        if outcomes:
            parts.append(f"{name}: " + ", ".join(f"{n} {o}" for o, n in outcomes.items()))
    if parts:
        terminalreporter.write_line("real servers — " + "; ".join(parts))
