"""Integration tests drive the CLI end to end (runner, sweeps, DDP, analysis, tuning, bench): all `slow`,
so `pytest -m "not slow"` is the fast inner loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.oracle_setting import ORACLE_BASE
from oracle_kd.cli import main


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def teacher_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the trained resnet8 teacher, trained once per session for analysis and tuning."""
    path = tmp_path_factory.mktemp("oracle_teacher_store")
    assert main([f"store={path}", *ORACLE_BASE, "task=train", "method=ce", "student=resnet8"]) == 0
    return path


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server (tests/helpers/pg_server.py) for this session's worker, stopped by PID at the
    end; skipped with one line saying how to enable it where the server or the driver is missing."""
    from helpers import pg_server
    why = pg_server.available()
    if why:
        pytest.skip(why)
    server = pg_server.start()
    yield server
    server.stop()
