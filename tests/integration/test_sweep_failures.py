"""A job of a sweep that fails: the others go on, the user reads our one line for it (Hydra's "Error executing job
with overrides" line before it nowhere: not on stderr, stdout or in a log), and the sweep's progress counts it
as failed, not done."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import main

HYDRA_LINE = "Error executing job"


def sweep(store: Path, capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `-m` with the cohort launcher; (exit code, stdout, stderr), each log file of the sweep appended to stdout."""
    outputs = store.parent / "multirun"
    capfd.readouterr()
    code = main(["-m", *TINY_RUN, f"store={store}", *args, "hydra/launcher=cohort", f"hydra.sweep.dir={outputs}"])
    out, err = capfd.readouterr()
    logs = sorted(outputs.rglob("*.log"))
    assert logs, f"no log file under {outputs}"
    return code, out + "".join(p.read_text() for p in logs), err


def only_our_line(out: str, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert HYDRA_LINE not in out + err and "Traceback" not in out + err
    return lines[0]


def test_an_impossible_job_is_our_line_alone(tmp_path, capfd):
    code, out, err = sweep(tmp_path / "runs", capfd, "method=kd", "train.lr=0.1,-1", "train.epochs=1")
    assert code == 2
    assert "train.lr" in only_our_line(out, err)
    assert len(list((tmp_path / "runs").glob("digits/kd/*/*/result.json"))) == 1


def test_a_pair_its_method_refuses_is_a_skipped_cell_not_a_failure(tmp_path, capfd):
    # an MLP teacher has 2 stages after its input, resnet8 3: AT cannot pair them, KD can
    code, out, err = sweep(tmp_path / "runs", capfd, "method=kd,at", "teacher=mlp16", "train.epochs=1")
    assert code == 0 and not [line for line in err.splitlines() if line.startswith("error: ")]
    assert "a pair its method refuses: method=at: pairs stage outputs one to one" in out + err
    assert HYDRA_LINE not in out + err and "Traceback" not in out + err
    assert len(list((tmp_path / "runs").glob("digits/kd/*/*/result.json"))) == 1


def test_a_run_that_diverges_is_our_line_alone_and_counted_as_failed(tmp_path, capfd):
    code, out, err = sweep(tmp_path / "runs", capfd, "method=ce", "train.lr=0.1,1e30")  # one cohort of two runs
    assert code == 2
    assert "non-finite loss" in only_our_line(out, err)
    assert "sweep: 1/2 runs done, 1 failed, 0 left" in out
    assert len(list((tmp_path / "runs").rglob("result.json"))) == 1
