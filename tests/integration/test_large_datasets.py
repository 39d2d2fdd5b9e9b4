"""Tiny-ImageNet and ImageNet trees through the real command line, with ResNet18 students (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers.imagefolder_fixtures import write_imagenet, write_tiny_imagenet
from oracle_kd.cli import main
from oracle_kd.models import build_model


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_tiny_imagenet(root, classes=3, per_class=4, val_per_class=2)
    write_imagenet(root, classes=3, per_class=4)
    return root


@pytest.mark.parametrize("dataset, size, stem", [("tiny_imagenet", 64, "cifar"), ("imagenet", 224, "imagenet")])
@pytest.mark.parametrize("method", ["oracle", "sad"])
def test_one_epoch_with_a_resnet18_student(trees, tmp_path, dataset, size, stem, method):
    teacher = tmp_path / "teacher.pth"
    torch.save(build_model("resnet18", 3, 3, image_size=size).state_dict(), teacher)
    argv = [f"store={tmp_path}/runs", f"dataset={dataset}", f"dataset.root={trees}", "dataset.workers=0",
            "teacher=resnet18", f"teacher.checkpoint={teacher}", "student=resnet18", f"method={method}",
            "train.epochs=1", "train.batch_size=6", "train.eval_batch_size=6", "progress=false", "hardware=cpu"]
    assert main(argv) == 0
    (result,) = [json.loads(p.read_text()) for p in Path(tmp_path / "runs").rglob("result.json")]
    assert result["dataset"] == dataset and result["method"] == method and result["epochs"] == 1
    rows = [json.loads(line) for line in (Path(result["folder"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["test_top1"] == result["last_top1"]
    assert math.isfinite(rows[0]["train_loss"]) and rows[0]["train_loss"] > 0  # a real step on real pixels
    correct = result["last_top1"] * 6 / 100  # every one of the 6 val images (3 classes x 2) was evaluated
    assert correct == pytest.approx(round(correct)) and 0 <= round(correct) <= 6
    model = build_model("resnet18", 3, 3, image_size=size)
    assert model.stem == stem
    model.load_state_dict(torch.load(Path(result["folder"]) / "model.pt", weights_only=True), strict=True)
