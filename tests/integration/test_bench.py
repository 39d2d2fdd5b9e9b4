"""task=bench: the reference loop's Step A is the same x* as ours, FLOP counts add up the work each step
does, every method runs in both loops, and the CLI prints the table and writes one CSV row per pair x
method. Tiny configs; nothing here asserts a timing."""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path

import pytest
import torch

from oracle_kd import config
from oracle_kd.cli import main
from oracle_kd.core.reinforce import reinforce
from oracle_kd.data.augment import normalize
from oracle_kd.methods import available_methods
from oracle_kd.methods.base import freeze
from oracle_kd.models import build_model
from oracle_kd.tasks.bench import config as bench_config
from oracle_kd.tasks.bench import parts, reference, report
from oracle_kd.tasks.bench.flops import FlopCount, step_flops

TINY = ["task=bench", "hardware=cpu", "hardware.threads=1", "progress=false", "bench.dataset=synthetic",
        "bench.batch_size=8", "bench.steps=1", "bench.repeats=2", "bench.warmup=1", "bench.workers=0",
        "bench.synthetic_images=64"]


@pytest.fixture(autouse=True)
def few_repeats(monkeypatch):
    """The task asks for a median of >= 5 repeats; these tests take 2 to stay fast."""
    monkeypatch.setattr(bench_config, "BENCH_MIN_REPEATS", 1)
    torch.set_num_threads(1)  # the machine is shared: no OpenMP spinning against other processes


def run_config(tmp_path: Path, *overrides: str) -> config.RunConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        return config.validate(compose("config", overrides=[f"results_dir={tmp_path}", *TINY, *overrides]))


def batch(n: int = 4, classes: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reference_step_a_is_our_x_star(reduction):
    """x* from `loss.backward()` on a grad-requiring teacher == x* from the input-only gradient."""
    torch.manual_seed(0)
    teacher = build_model("resnet8", 100, 3).eval()
    frozen = freeze(copy.deepcopy(teacher))
    x, y = batch()
    ours = reinforce(frozen, x, y, gamma=0.5, reduction=reduction)
    ref = reference.reference_reinforce(teacher, x.clone(), y, gamma=0.5, reduction=reduction)
    torch.testing.assert_close(ref.detach(), ours, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours, x)
    assert all(p.grad is not None for p in teacher.parameters())  # the work the reference pays for
    assert all(p.grad is None for p in frozen.parameters())


def test_flop_counts_add_up_the_work_of_each_step(tmp_path):
    rc = run_config(tmp_path)
    x, y = batch()

    def flops(kind, method: str) -> int:
        cfg = parts.method_config(rc, method, "resnet8")
        return step_flops(kind(rc, cfg, "resnet8", "resnet8", 100, torch.device("cpu")), x.clone(), y)

    ours = {m: flops(parts.our_step, m) for m in ("ce", "kd", "oracle")}
    ref = {m: flops(reference.reference_step, m) for m in ("kd", "oracle")}
    teacher = freeze(build_model("resnet8", 100, 3))
    with FlopCount() as fwd, torch.no_grad():
        teacher(x)
    xi = x.clone().requires_grad_(True)
    with FlopCount() as fwd_and_input_grad:
        torch.autograd.grad(torch.nn.functional.cross_entropy(teacher(xi)[0], y), xi)

    assert ours["oracle"] > ours["kd"] > ours["ce"] > 0
    assert ours["kd"] - ours["ce"] == fwd.total  # KD adds one teacher forward
    assert ours["oracle"] - ours["kd"] == fwd_and_input_grad.total  # Step A: forward + input gradient only
    assert ref["kd"] == ours["kd"]  # same loss, same models: only the data path differs
    assert ref["oracle"] > ours["oracle"]  # .backward() also computes every teacher weight gradient


def test_both_loops_run_every_method(tmp_path):
    rc = run_config(tmp_path)
    device = torch.device("cpu")
    bundle, kind = parts.bench_data(rc)
    assert kind == "synthetic" and bundle.num_classes == 100 and len(bundle.train) >= 64
    loader = reference.reference_loader(bundle, batch_size=8, workers=0, device=device, seed=0)
    ref_x, ref_y = next(reference.reference_batches(loader, device))
    our_x, our_y = next(parts.our_batches(bundle, rc, device))
    for x, y in ((ref_x, ref_y), (our_x, our_y)):
        assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    for method in available_methods():
        arch = "sfx4_resnet8" if method == "ked" else "resnet8"  # KED distils between explaining models
        cfg = parts.method_config(rc, method, arch)
        reference.reference_step(rc, cfg, arch, arch, 100, device)(ref_x.clone(), ref_y)
        parts.our_step(rc, cfg, arch, arch, 100, device)(our_x, our_y)


@pytest.mark.parametrize("teacher,student", [("vgg13", "mobilenetv2"), ("wrn_40_2", "shufflenetv1")])
def test_both_loops_take_the_model_zoo(tmp_path, teacher, student):
    rc = run_config(tmp_path)
    device = torch.device("cpu")
    bundle, _ = parts.bench_data(rc)
    x, y = next(parts.our_batches(bundle, rc, device))
    for method in ("kd", "oracle"):
        cfg = parts.method_config(rc, method, teacher)
        reference.reference_step(rc, cfg, teacher, student, 100, device)(x.clone(), y)
        parts.our_step(rc, cfg, teacher, student, 100, device)(x, y)


def test_reference_dataset_reads_the_same_pixels(tmp_path):
    """HWC numpy -> PIL -> ToTensor -> Normalize gives the CHW image our loader normalises."""
    from torchvision import transforms

    rc = run_config(tmp_path)
    bundle, _ = parts.bench_data(rc)
    images = bundle.train.images[:3]
    ds = reference.ReferenceDataset(images.permute(0, 2, 3, 1).contiguous().numpy(), bundle.train.labels[:3].numpy(),
                                    transforms.Compose([transforms.ToTensor(),
                                                        transforms.Normalize(bundle.mean, bundle.std)]))
    for i in range(3):
        x, label = ds[i]
        torch.testing.assert_close(x, normalize(images[i], bundle.mean, bundle.std), rtol=1e-5, atol=1e-5)
        assert label == int(bundle.train.labels[i])


def test_bench_task_prints_the_table_and_writes_a_row_per_pair_and_method(tmp_path, capsys):
    assert main([f"results_dir={tmp_path}", f"store={tmp_path}/runs", *TINY, "bench.workers=1",
                 "bench.pairs=[resnet8-resnet8,'resnet14->resnet8']", "bench.methods=[kd,oracle]"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("method "))
    assert re.split(r"\s{2,}", header.strip()) == [
        "method", "pair", "batch", "ref img/s", "ours img/s", "ratio", "ref MiB", "ours MiB", "ref floor",
        "ours floor", "ref %floor", "ours %floor"]
    assert "ref = per-image torchvision transforms + DataLoader(workers=1) + fp32" in out
    (path,) = (tmp_path / "bench").glob("bench_*.csv")
    assert f"-> {path}" in out
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == report.COLUMNS
        rows = list(reader)
    assert sorted((r["pair"], r["method"]) for r in rows) == [
        ("resnet14-resnet8", "kd"), ("resnet14-resnet8", "oracle"), ("resnet8-resnet8", "kd"),
        ("resnet8-resnet8", "oracle")]
    for r in rows:
        assert r["data"] == "synthetic" and r["dataset"] == "cifar100" and r["device"] == "cpu"
        assert r["device_name"] and r["torch"] == torch.__version__ and r["peak_mem_kind"].startswith("cpu")
        assert len(r["ours_img_s_repeats"].split(";")) == 2
        for col in ("ref_img_s", "ours_img_s", "ratio", "ref_step_gflop", "ours_step_gflop", "ref_floor_img_s",
                    "ours_floor_img_s", "ref_pct_of_floor", "ours_pct_of_floor"):
            assert float(r[col]) > 0, col
        assert f"{r['method']:<6}  {r['pair']}" in out
    oracle = {r["pair"]: r for r in rows if r["method"] == "oracle"}
    assert float(oracle["resnet14-resnet8"]["ours_step_gflop"]) > float(oracle["resnet8-resnet8"]["ours_step_gflop"])


@pytest.mark.parametrize("override, expected", [
    ("bench.pairs=[resnet8]", "bench.pairs='resnet8' must be 'teacher-student'"),
    ("bench.pairs=[resnet8-vgg]", "names an unknown model 'vgg'"),
    ("bench.methods=[kd,oracel]", "bench.methods='oracel' is not one of: at, ce,"),
    ("bench.dataset=imagenet", "bench.dataset='imagenet' is not one of: cifar100, cifar10, synthetic"),
])
def test_bad_bench_values_are_one_line(capsys, tmp_path, override, expected):
    assert main([f"store={tmp_path}/runs", *TINY, override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1


def test_fewer_than_five_repeats_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_config, "BENCH_MIN_REPEATS", 5)
    assert main([f"store={tmp_path}/runs", *TINY]) == 2
    assert "bench.repeats=2 must be >= 5" in capsys.readouterr().err


def test_concurrent_runs_report_aggregate_throughput_per_k(tmp_path, capsys):
    """bench.concurrent: k processes train at once after a barrier; one CSV row per k, speed-up vs the first k."""
    assert main([f"results_dir={tmp_path}", f"store={tmp_path}/runs", *TINY, "bench.pairs=[resnet8-resnet8]",
                 "bench.methods=[kd]", "bench.reference=false", "bench.flops=false", "bench.concurrent=[1,2]"]) == 0
    out = capsys.readouterr().out
    assert "aggregate img/s" in out
    (path,) = (tmp_path / "bench").glob("concurrent_*.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["k"]) for r in rows] == [1, 2]
    assert float(rows[0]["speedup"]) == pytest.approx(1.0)
    for r in rows:
        assert float(r["aggregate_img_s"]) > 0 and float(r["per_run_img_s"]) > 0
        assert r["method"] == "kd" and r["pair"] == "resnet8-resnet8" and int(r["threads_per_run"]) == 1
