"""What the config alone can tell is refused in one line when it is validated: before the dataset is read,
before an auto teacher trains, and leaving nothing in the store. A teacher, student and method that cannot
train together; a training subset smaller than the class count; a tuning storage that does not open."""

from __future__ import annotations

import pytest

from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import main

CASES = {
    "at-stage-counts": (["method=at", "teacher=resnet18", "student=resnet20"],
                        "method=at: pairs stage outputs one to one, but the teacher has 4 stages and the student 3"),
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
    "train-size-below-classes": (["method=kd", "dataset.train_size=9"],
                                 "dataset.train_size=9 is fewer samples than the 10 classes of digits"),
    "tune-storage-no-driver": (["task=tune", "tune.storage=postgresql+pg8000://kd@127.0.0.1:1/optuna"],
                               "tune.storage=postgresql+pg8000://kd@127.0.0.1:1/optuna: its database driver is not "
                               "installed"),
    "tune-storage-no-server": (["task=tune", "tune.storage=postgresql+psycopg://kd@127.0.0.1:1/optuna"],
                               "cannot open the database"),  # nothing listens on port 1
    "tune-storage-not-a-url": (["task=tune", "tune.storage=optuna.db"], "tune.storage=optuna.db is not a database URL"),
    "tune-journal-under-a-file": (["task=tune", "tune.journal=/dev/null/study.log"],
                                  "cannot use '/dev/null': it exists and is not a folder; choose another tune.journal="),
}


@pytest.mark.parametrize("argv, line", CASES.values(), ids=CASES)
def test_a_config_error_is_one_line_before_any_teacher_trains(tmp_path, capsys, argv, line):
    store = tmp_path / "runs"
    # dataset.root points nowhere: the check must come before the data is read
    assert main([*TINY_RUN, f"store={store}", f"dataset.root={tmp_path}/nowhere", *argv]) != 0
    err = capsys.readouterr().err
    assert line in err and len(err.strip().splitlines()) == 1, err
    assert not store.exists()  # nothing trained, no run folder (Hydra's own folders are outside the store)


def test_in_a_sweep_a_pair_the_method_refuses_is_skipped_before_training_and_the_others_go_on(tmp_path, capsys):
    store = tmp_path / "runs"
    # an MLP teacher has 2 stages after its input, resnet8 3: AT cannot pair them, KD can. In a grid that is a
    # blank cell (said in one line), not a failed sweep.
    assert main(["-m", *TINY_RUN, f"store={store}", "method=kd,at", "teacher=mlp16", "train.epochs=1",
                 "hydra/launcher=cohort"]) == 0
    captured = capsys.readouterr()
    assert "a pair its method refuses: " in captured.out + captured.err
    assert "teacher has 2 stages and the student 3" in captured.out + captured.err
    assert not list(store.glob("digits/at")) and len(list(store.glob("digits/kd/*/*/result.json"))) == 1
