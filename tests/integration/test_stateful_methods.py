"""Methods that own more than a loss, through the real command line on datasets in their real formats: CRD (sample
indices into a memory bank over the training split), DOT (two momentum buffers per parameter), MLKD (a second,
strongly augmented view of every batch) and OFD (its own teacher pass on the unfolded teacher) on a CIFAR-100
folder of pickles, CRD on a Tiny-ImageNet tree (indices
from the folder loader), and MLKD's two-view runs as cohorts of their own."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from helpers.cifar_fixtures import write_cifar100
from helpers.imagefolder_fixtures import write_tiny_imagenet
from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import compose, main
from oracle_kd.engine.cohort import group_cohorts
from oracle_kd.engine.trainer import run_cohort

COMMON = ["teacher=resnet8", "student=resnet8", "train=quick", "train.epochs=1", "train.batch_size=32",
          "progress=false", "hardware=cpu"]


def snapshot(store: Path) -> dict[str, tuple[str, list[dict]]]:
    """Per run folder: model.pt's hash and the metrics rows without their times."""
    out = {}
    for res in sorted(store.rglob("result.json")):
        rows = [json.loads(line) for line in (res.parent / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            r.pop("epoch_time_s")
        out[str(res.parent.relative_to(store))] = (hashlib.sha256((res.parent / "model.pt").read_bytes()).hexdigest(),
                                                   rows)
    return out


def finished(store: Path) -> dict[str, dict]:
    out = {}
    for p in store.rglob("result.json"):
        r = json.loads(p.read_text())
        out[r["method"] + ("+dot" if r["config"]["train"]["optimizer"] == "dot" else "")] = r
    return out


def test_crd_dot_mlkd_and_ofd_train_on_cifar100_in_its_pickle_format(tmp_path):
    write_cifar100(tmp_path / "data", n_train=96, n_test=20)
    data = ["dataset=cifar100", f"dataset.root={tmp_path}/data", f"store={tmp_path}/runs", *COMMON]
    assert main(["-m", *data, f"hydra.sweep.dir={tmp_path}/sweep", "method=crd", "method.negatives=256",
                 "train.optimizer=sgd,dot"]) == 0
    assert main([*data, f"hydra.run.dir={tmp_path}/run", "method=kd", "train.optimizer=dot"]) == 0
    assert main([*data, f"hydra.run.dir={tmp_path}/run2", "method=mlkd"]) == 0
    assert main([*data, f"hydra.run.dir={tmp_path}/run3", "method=ofd"]) == 0
    runs = finished(tmp_path / "runs")
    assert set(runs) == {"ce", "crd", "crd+dot", "kd+dot", "mlkd", "ofd"}  # ce: the auto teacher
    for name in ("crd", "crd+dot", "kd+dot", "mlkd", "ofd"):
        rows = [json.loads(line) for line in (Path(runs[name]["folder"]) / "metrics.jsonl").read_text().splitlines()]
        assert math.isfinite(rows[0]["train_loss"]) and rows[0]["train_loss"] > 0
    ckpt = torch.load(Path(runs["crd+dot"]["folder"]) / "last.pt", weights_only=True)
    assert ckpt["model"]["memory.bank_s"].shape == (96, 128)  # one entry per training sample
    assert {k for s in ckpt["optimizer"]["state"].values() for k in s} == {"momentum_buffer", "momentum_kd_buffer"}
    assert runs["crd"]["extra_params"] == (64 + 1) * 128 * 2  # the two embeddings (resnet8 pools 64 channels)


def test_crd_reads_sample_indices_from_the_folder_loader(tmp_path):
    write_tiny_imagenet(tmp_path / "data", classes=3, per_class=4, val_per_class=2)
    assert main([f"store={tmp_path}/runs", "dataset=tiny_imagenet", f"dataset.root={tmp_path}/data",
                 "dataset.workers=0", "teacher=resnet8", "student=resnet8", "method=crd", "method.negatives=16",
                 "train=quick", "train.epochs=1", "train.batch_size=6", "train.eval_batch_size=6", "progress=false",
                 "hardware=cpu"]) == 0
    (crd,) = [r for r in finished(tmp_path / "runs").values() if r["method"] == "crd"]
    bank = torch.load(Path(crd["folder"]) / "last.pt", weights_only=True)["model"]["memory.bank_s"]
    assert bank.shape == (12, 128)
    assert torch.allclose(bank.norm(dim=1), torch.ones(12), atol=1e-5)  # every entry was visited and renormalised


def test_two_view_runs_form_their_own_cohort_and_equal_their_solo_runs(tmp_path):
    """MLKD's strong view is part of the batch stream: mlkd runs never share a cohort with single-view runs,
    and two of them trained together end bit-identical to each trained alone."""
    tiny = [*TINY_RUN, "method=mlkd", "train.epochs=1"]
    rcs = [compose([*tiny, f"store={tmp_path}/{where}", *extra]) for where in ("solo", "cohort")
           for extra in ([], ["method.kd_weight=0.5"])]
    kd = compose([*TINY_RUN, "method=kd", "train.epochs=1", f"store={tmp_path}/solo"])
    assert group_cohorts([*rcs[:2], kd]) == [[0, 1], [2]]
    for rc in rcs[:2]:
        run_cohort([rc])
    results = run_cohort(rcs[2:])
    assert [r["cohort"]["size"] for r in results] == [2, 2]
    solo, cohort = (snapshot(tmp_path / where) for where in ("solo", "cohort"))
    assert solo == cohort and len(solo) == 3  # + the ce teacher


@pytest.mark.parametrize("argv, line", [
    (["method=ce", "train.optimizer=dot"], "train.optimizer='dot' steps distillation terms apart from CE"),
    (["method=kd", "train.optimizer=dot", "train.dot_delta=0.2"], "train.dot_delta=0.2 must be > 0 with both"),
    (["method=crd", "hardware.ddp=true"], "hardware.ddp=True is not supported by method crd"),
])
def test_what_dot_and_crd_cannot_do_is_one_line_before_anything_trains(tmp_path, capsys, argv, line):
    assert main([f"store={tmp_path}/runs", *COMMON, *argv]) != 0
    assert line in capsys.readouterr().err and not list((tmp_path / "runs").glob("digits"))  # no run folder
