"""Bad config values give one clear line (exit 2), through the real command line."""

from __future__ import annotations

import pytest
import torch

from oracle_kd.cli import compose, main
from oracle_kd.config import group_options
from oracle_kd.models import build_model

TINY = ["train.epochs=1", "teacher=resnet8", "student=resnet8", "progress=false"]


def error_line(capsys, argv, tmp_path) -> str:
    code = main([f"store={tmp_path}/runs", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["method=oracle", "method.ce_weight_by_teacher={resnet56: 0.3}"], "method.ce_weight_by_teacher is a table: add its "
     "entries with a leading +"),
    (["method=oracel"], f"unknown method 'oracel'; choose one of: {', '.join(group_options('method'))}"),
    (["student=resnet21"], "unknown student 'resnet21'; choose one of:"),
    (["teacher=vgg"], "unknown teacher 'vgg'; choose one of:"),
    (["dataset=mnist"], "unknown dataset 'mnist'; choose one of: cifar10, cifar100, digits"),
    (["student.arch=resnet21"], "student.arch='resnet21' is not one of: "),
    (["method=oracle", "method.gamma=-1"], "method.gamma=-1.0 must be >= 0"),
    (["method=oracle", "method.gamma_reduction=max"], "method.gamma_reduction='max' is not one of: mean, sum"),
    (["method=kd", "method.temperature=0"], "method.temperature=0.0 must be > 0"),
    (["method=oracle", "method.gamma=abc"], "method.gamma='abc': wrong type, expected float"),
    (["method=oracle", "method.gamam=0.5"],
     "unknown key 'method.gamam'; method accepts: alpha, alpha_by_pair, ce_weight, ce_weight_by_teacher, gamma,"),
    (["method=ce", "method.gamma=0.5"], "unknown key 'method.gamma'; method accepts: ce_weight, ce_weight_by_teacher, name"),
    (["train.epochs=0"], "train.epochs=0 must be >= 1"),
    (["hardware.precision=fp8"], "hardware.precision='fp8' is not one of: fp32, bf16"),
    (["sed=1"], "unknown key 'sed'"),
])
def test_bad_values_are_one_line(capsys, tmp_path, argv, expected):
    assert expected in error_line(capsys, [*TINY, *argv], tmp_path)


@pytest.mark.parametrize("dataset, folder", [("cifar100", "cifar-100-python"), ("tiny_imagenet", "tiny-imagenet-200")])
def test_missing_dataset_dir_is_one_line_pointing_at_the_download(capsys, tmp_path, dataset, folder):
    line = error_line(capsys, [*TINY, f"dataset={dataset}", f"dataset.root={tmp_path}/nowhere"], tmp_path)
    assert folder in line and str(tmp_path / "nowhere") in line and "dataset.download=true fetches it" in line


def test_mismatched_teacher_checkpoint_is_one_line(capsys, tmp_path):
    ckpt = tmp_path / "cifar100_resnet20.pth"
    torch.save({"model": build_model("resnet20", 100, 3).state_dict()}, ckpt)  # 100 classes, 3 channels
    line = error_line(capsys, [*TINY, "method=kd", "teacher=resnet20", f"teacher.checkpoint={ckpt}"], tmp_path)
    assert "does not fit resnet20 (10 classes)" in line
    assert "fc.weight (100, 64) vs (10, 64)" in line or "conv1.weight (16, 3, 3, 3) vs (16, 1, 3, 3)" in line


def test_missing_teacher_checkpoint_is_one_line(capsys, tmp_path):
    line = error_line(capsys, [*TINY, "method=kd", f"teacher.checkpoint={tmp_path}/none.pth"], tmp_path)
    assert "teacher.checkpoint=" in line and "no such file" in line


def test_conflicting_hydra_flags_are_one_line(capsys, tmp_path):
    line = error_line(capsys, ["-m", "--cfg", "job"], tmp_path)
    assert "Only one of --run, --multirun" in line


@pytest.mark.parametrize("overrides,epochs,lr", [([], 12, 0.005), (["dataset=cifar100"], 240, 0.05),
                                                 (["train=paper"], 240, 0.05), (["train.epochs=3"], 3, 0.005),
                                                 (["dataset=cifar10", "train=quick"], 12, 0.005)])
def test_the_recipe_follows_the_dataset_unless_train_is_given(overrides, epochs, lr):
    rc = compose(overrides)
    assert (rc.train.epochs, rc.train.lr) == (epochs, lr)


def test_the_picked_recipe_is_said_in_one_line(tmp_path, capfd):
    assert main([f"store={tmp_path}", "method=ce", "student=resnet8", "train.epochs=1", "progress=false"]) == 0
    lines = [line for line in capfd.readouterr().out.splitlines() if "recipe:" in line]
    assert len(lines) == 1 and "train=quick (1 epochs), the default for digits" in lines[0]


def test_the_installed_command_finds_its_launchers_outside_the_checkout(tmp_path):
    """`oracle-kd` from the environment the suite runs in (the README's editable install), started in an empty
    folder: its Hydra plugins (the default sweeper, `hydra/launcher=cohort`) are found although an editable
    install's import hook cannot be listed the way Hydra looks for plugins."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("oracle-kd")
    if not script.exists():
        pytest.skip(f"no oracle-kd command beside {sys.executable}: the package is not installed there")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(script), "-m", "task=plan", f"store={tmp_path / 'runs'}", "method=kd,ce",
                           "hydra/launcher=cohort"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plan cohort 1/1: 2 runs" in done.stdout and done.stdout.count("plan: new") == 2  # kd and ce
