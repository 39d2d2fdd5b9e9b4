"""A teacher, student and method that cannot train together are refused in one line when the config is
validated: before the dataset is read, before an auto teacher trains, and leaving no run folder."""

from __future__ import annotations

import pytest

from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import main

CASES = {
    "at-stage-counts": (["method=at", "teacher=resnet18", "student=resnet20"],
                        "method='at' pairs stage outputs one to one, but the teacher has 4 stages and the student 3"),
    "fitnet-hint-stage": (["method=fitnet", "method.hint_stage=9"], "method.hint_stage=9 must be < 4"),
    "ofd-linear-bottleneck": (["method=ofd", "student=mobilenetv2"],
                              "method=ofd: student MobileNetV2 has no pre-ReLU stage maps"),
    "ked-plain-models": (["method=ked"], "method=ked needs superfeature-explaining teacher and student"),
    "chimeric-oracle": (["method=oracle", "train.chimeric_epochs=1", "train.chimeric_size=50"],
                        "the chimeric samples are labelled by the teacher on the plain input, so the method needs "
                        "one (kd, ked, ...), not oracle"),
    "chimeric-no-teacher": (["method=ce", "train.chimeric_epochs=1", "train.chimeric_size=50"],
                            "the chimeric samples are labelled by a teacher; method ce has none"),
    "chimeric-folder-set": (["method=kd", "dataset=tiny_imagenet", "train.chimeric_epochs=1",
                             "train.chimeric_size=50"], "needs a dataset held in memory (digits, CIFAR)"),
}


@pytest.mark.parametrize("argv, line", CASES.values(), ids=CASES)
def test_an_impossible_pairing_is_one_line_before_any_teacher_trains(tmp_path, capsys, argv, line):
    store = tmp_path / "runs"
    # dataset.root points nowhere: the check must come before the data is read
    assert main([*TINY_RUN, f"store={store}", f"dataset.root={tmp_path}/nowhere", *argv]) != 0
    err = capsys.readouterr().err
    assert line in err and len(err.strip().splitlines()) == 1, err
    assert not [p for p in store.glob("*") if p.name != ".hydra"]  # nothing trained, no run folder


def test_in_a_sweep_the_impossible_job_fails_alone_before_training_and_the_others_go_on(tmp_path, capsys):
    store = tmp_path / "runs"
    # an MLP teacher has 2 stages after its input, resnet8 3: AT cannot pair them, KD can
    assert main(["-m", *TINY_RUN, f"store={store}", "method=kd,at", "teacher=mlp16", "train.epochs=1",
                 "hydra/launcher=cohort"]) != 0
    assert "teacher has 2 stages and the student 3" in capsys.readouterr().err
    assert not list(store.glob("digits/at")) and len(list(store.glob("digits/kd/*/*/result.json"))) == 1
