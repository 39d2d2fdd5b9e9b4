"""Teachers from checkpoint files, the learning-rate schedule, and a CIFAR run in the real format."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from helpers.cifar_fixtures import write_cifar100
from oracle_kd.cli import main
from oracle_kd.config import TrainConfig
from oracle_kd.engine.step import lr_at
from oracle_kd.engine.weights import load_weights, read_state_dict
from oracle_kd.errors import CheckpointError
from oracle_kd.models import build_model


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"model": sd, "epoch": 3},
                                  lambda sd: {"state_dict": sd}, lambda sd: {"net": sd}])
def test_checkpoint_wrappers_and_module_prefix(tmp_path, wrap):
    src = build_model("resnet8", 10, 3)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}  # as saved from DataParallel
    path = tmp_path / "t.pth"
    torch.save(wrap(sd), path)
    dst = build_model("resnet8", 10, 3)
    load_weights(dst, read_state_dict(path), source=str(path), arch="resnet8")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst.eval()(x)[0], src.eval()(x)[0])


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only=True") as err:
        read_state_dict(path)
    assert not marker.exists()
    assert_names_the_refused_global(str(err.value), f"{os.system.__module__}.system")  # a module torch blocks


def assert_names_the_refused_global(line: str, name: str) -> None:
    """The line says which global was refused and why, never torch's advice to load with weights_only=False."""
    assert "\n" not in line and "\x1b" not in line, line
    assert f"it needs the global {name}, and checkpoints are read with weights_only=True" in line, line
    assert "could run code" in line and "weights_only=False" not in line and "will likely succeed" not in line, line


def test_wrong_architecture_names_the_mismatch(tmp_path):
    path = tmp_path / "r20.pth"
    torch.save(build_model("resnet20", 10, 3).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_weights(build_model("resnet8", 10, 3), read_state_dict(path), source=str(path), arch="resnet8")
    msg = str(err.value)
    assert "\n" not in msg and "does not fit resnet8" in msg and "unexpected keys (e.g. layer1.1." in msg


def test_lr_schedule_is_multistep_with_optional_warmup():
    t = TrainConfig(lr=0.05, milestones=[150, 180, 210], lr_decay=0.1)
    assert lr_at(t, 1) == 0.05 and lr_at(t, 150) == 0.05
    assert lr_at(t, 151) == pytest.approx(0.005) and lr_at(t, 181) == pytest.approx(0.0005)
    assert lr_at(t, 240) == pytest.approx(0.00005)
    w = TrainConfig(lr=0.1, milestones=[10], warmup_epochs=2)
    assert lr_at(w, 1, 0.5) == pytest.approx(0.025) and lr_at(w, 2, 1.0) == pytest.approx(0.1)
    assert lr_at(w, 3) == 0.1 and lr_at(w, 11) == pytest.approx(0.01)


def test_cifar100_real_format_runs_end_to_end_with_a_checkpoint_teacher(tmp_path):
    write_cifar100(tmp_path / "data", n_train=40, n_test=16)
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": build_model("resnet8", 100, 3).state_dict()}, teacher)
    argv = [f"store={tmp_path}/runs", "dataset=cifar100", f"dataset.root={tmp_path}/data", "teacher=resnet8",
            f"teacher.checkpoint={teacher}", "student=resnet8", "method=oracle", "train.epochs=1",
            "train.batch_size=16", "progress=false", "hardware=cpu"]
    assert main(argv) == 0
    (result,) = [json.loads(p.read_text()) for p in Path(tmp_path / "runs").rglob("result.json")]
    assert result["dataset"] == "cifar100" and result["method"] == "oracle"
    assert result["teacher_info"]["source"] == str(teacher)
    assert result["semantic"]["teacher"]["source"] == "file" and len(result["semantic"]["teacher"]["sha256"]) == 64
    assert 0.0 <= result["last_top1"] <= 100.0


def test_mdistiller_style_checkpoint_with_namespace_and_numpy_scalars_loads(tmp_path):
    import argparse

    import numpy as np

    src = build_model("resnet8", 10, 3)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": src.state_dict(), "opt": argparse.Namespace(lr=0.05, model="resnet8"),
                "best_acc": np.float64(71.5), "epoch": np.int64(240)}, path)
    dst = build_model("resnet8", 10, 3)
    load_weights(dst, read_state_dict(path), source=str(path), arch="resnet8")
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_other_globals_stay_refused(tmp_path):
    from collections import Counter  # harmless, but not on the allow-list

    path = tmp_path / "odd.pth"
    torch.save({"model": build_model("resnet8", 10, 3).state_dict(), "extra": Counter(a=1), "f": Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True") as err:
        read_state_dict(path)
    assert_names_the_refused_global(str(err.value), "fractions.Fraction")


def test_a_torchscript_file_is_refused_with_the_reason_and_without_torch_advice(tmp_path):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # torch deprecates TorchScript (and says so on load); such files still circulate
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
        with pytest.raises(CheckpointError) as err:
            read_state_dict(path)
    line = str(err.value)
    assert line.startswith(f"cannot read checkpoint {str(path)!r} with weights_only=True: RuntimeError: Cannot use "
                           "``weights_only=True`` with TorchScript archives"), line
    assert "\n" not in line and "weights_only` set to `False`" not in line and "will likely succeed" not in line, line
