"""Checks made from the config alone, before any work: `dataset.train_size` against the dataset (its class count
and its training split as published), and which setting an OSError's advice names for the path that failed."""

from __future__ import annotations

import errno
import logging

import pytest

from oracle_kd.cli import compose
from oracle_kd.data import load_dataset
from oracle_kd.data.subset import train_split_size
from oracle_kd.engine.teacher import identify
from oracle_kd.errors import os_error_line, setting_for


@pytest.mark.parametrize("fraction", [0.25, 0.1, 0.333, 0.9])
def test_the_published_digits_split_is_what_the_loader_keeps(fraction: float) -> None:
    assert train_split_size("digits", fraction) == len(load_dataset("digits", "data", test_fraction=fraction).train)


@pytest.mark.parametrize("size", [1347, 5001])
def test_a_train_size_of_the_whole_split_is_the_run_without_it(size: int, caplog: pytest.LogCaptureFixture) -> None:
    base = ["method=kd", "teacher=resnet8", "student=resnet8"]
    with caplog.at_level(logging.INFO, logger="oracle_kd"):
        rc = compose([*base, f"dataset.train_size={size}"])
        compose([*base, f"dataset.train_size={size}"])  # a config checked again (launcher, then job): said once
    said = [r.getMessage() for r in caplog.records if f"dataset.train_size={size}" in r.getMessage()]
    assert said == [f"dataset.train_size={size} is the whole training split of digits (1347 samples): training on "
                    "all of it, as the run without dataset.train_size (the same run_id)"]
    assert rc.dataset.train_size == 0 and identify(rc)[1] == identify(compose(base))[1]
    assert identify(compose([*base, "dataset.train_size=1346"]))[1] != identify(rc)[1]  # a real subset


def test_the_split_follows_the_test_fraction() -> None:
    rc = compose(["method=kd", "dataset.test_fraction=0.5", "dataset.train_size=1000"])
    assert rc.dataset.train_size == 0  # 898 training images at this fraction


FOLDERS = {"store=": "/data/runs", "results_dir=": "results", "hydra.run.dir=": "outputs/2024-01-01/12-00-00",
           "tune.journal=": "/data/runs/tune/study.log"}


@pytest.mark.parametrize("path, setting", [
    ("/data/runs/digits/kd/x/last.pt", "store="),
    ("/data/runs/tune/study.log", "tune.journal="),  # the deepest folder that holds it
    ("results/runs.csv", "results_dir="),
    ("outputs", "hydra.run.dir="),  # a parent that could not be created
    ("/data", "store= or tune.journal="),
    ("/elsewhere/teacher.pt", None),
    (None, None),
])
def test_the_advice_names_the_setting_that_placed_the_path(path: str | None, setting: str | None) -> None:
    assert setting_for(path, FOLDERS) == setting


def test_the_advice_line_names_the_setting_or_both_usual_ones() -> None:
    exc = PermissionError(errno.EACCES, "Permission denied", "/data/runs/x")
    assert os_error_line(exc, "hydra.run.dir=") == ("cannot use '/data/runs/x': permission denied; fix the folder's "
                                                    "permissions or point hydra.run.dir= elsewhere")
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "/x")).endswith(
        "the file system is read-only; point store= (or results_dir=) at a writable folder")
    assert os_error_line(OSError(errno.ENOSPC, "No space left", "/x")).startswith("cannot use '/x': the disk is full;")
