"""Reliability: a typo, a non-finite value, a damaged store or a full disk gets one clear line and loses nothing.

Each damaged-store case starts from a copy of one finished (or one stopped) run, damages one file the way a
crash, a hand edit or a bad disk would, relaunches, and checks the exit code, that anything printed is one
line naming the file or key, and that the finished numbers did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.small_disk import small_tmpfs
from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import main

BASE = TINY_RUN
# in and out of process, whatever thread count an earlier test left behind
CE = [*BASE, "method=ce"]
KD = [*BASE, "method=kd"]
REPO = Path(__file__).resolve().parents[2]


def launch(store: Path, *args: str) -> int:
    return main([f"store={store}", *args])


def folder_of(store: Path, method: str) -> Path:
    (path,) = [p for p in store.rglob("config.json") if p.parts[-4] == method]
    return path.parent


def numbers(folder: Path) -> dict:
    rec = json.loads((folder / "result.json").read_text())
    return {k: rec[k] for k in ("run_id", "best_top1", "best_epoch", "last_top1", "last_test_loss")}


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_model(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with a finished KD run and its finished auto teacher (the uninterrupted reference)."""
    store = tmp_path_factory.mktemp("finished") / "runs"
    assert launch(store, *KD) == 0
    return store


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same KD run stopped after epoch 1 (a resumable, unfinished run)."""
    store = tmp_path_factory.mktemp("stopped") / "runs"
    assert launch(store, *KD, "stop_after_epoch=1") == 0
    return store


@pytest.fixture
def copy_of(tmp_path: Path):
    def make(store: Path) -> Path:
        dest = tmp_path / "runs"
        shutil.copytree(store, dest)
        return dest

    return make


# ----------------------------------------------------------------------------- config: typos, non-finite, seeds
@pytest.mark.parametrize("override,key", [("+method.gama=2", "method.gama"), ("+train.epoch=3", "train.epoch"),
                                          ("+seeed=3", "seeed"), ("+hardware.thread=2", "hardware.thread"),
                                          ("+tune.trials=2", "tune.trials")])
def test_a_plus_typo_is_one_line_naming_the_key(tmp_path, capsys, override, key):
    assert launch(tmp_path / "runs", *BASE, "method=oracle", override) == 2
    line = one_error_line(capsys)
    assert f"unknown key {key!r}" in line and "accepts:" in line
    assert not (tmp_path / "runs" / "digits").exists()


@pytest.mark.parametrize("override", ["method.gamma=inf", "train.lr=inf", "method.temperature=inf",
                                      "method.alpha=nan", "train.weight_decay=-inf"])
def test_non_finite_values_are_rejected(tmp_path, capsys, override):
    assert launch(tmp_path / "runs", *BASE, "method=oracle", override) == 2
    key = override.split("=")[0]
    assert f"error: {key}=" in one_error_line(capsys) and not (tmp_path / "runs" / "digits").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**40)])
def test_seed_outside_numpy_and_torch_range_is_rejected_up_front(tmp_path, capsys, seed):
    assert launch(tmp_path / "runs", *CE, f"seed={seed}") == 2
    assert "seed=" in one_error_line(capsys) and not (tmp_path / "runs" / "digits").exists()


def test_non_finite_loss_fails_the_run_and_the_tables_say_so(tmp_path, capsys):
    store = tmp_path / "runs"
    assert launch(store, *CE, "train.lr=1e30") == 2
    line = one_error_line(capsys)
    assert "non-finite loss at step" in line and "in epoch 1" in line and "(terms: " in line
    folder = folder_of(store, "ce")
    assert not (folder / "result.json").exists()
    assert "non-finite loss" in json.loads((folder / "failure.json").read_text())["error"]
    assert launch(store, "task=tables", f"results_dir={tmp_path / 'res'}") == 0
    out = capsys.readouterr()
    assert "failed: run " in out.out + out.err and "unfinished" not in out.out + out.err


# ----------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask", [0o002, 0o022])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = tmp_path / "runs"
        assert launch(store, *CE, "stop_after_epoch=1") == 0
        assert launch(store, *CE) == 0  # the resume rewrites metrics.jsonl atomically
        assert launch(store, "task=tables", f"results_dir={tmp_path / 'res'}") == 0
    finally:
        os.umask(old)
    files = [p for p in [*store.rglob("*"), *(tmp_path / "res").rglob("*")] if p.is_file() and p.name != ".lock"]
    assert {p.name for p in files} >= {"result.json", "last.pt", "model.pt", "config.json", "metrics.jsonl"}
    assert any(p.suffix == ".csv" for p in files)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


# ----------------------------------------------------------------------------- damaged result.json / model.pt
DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "garbled": lambda b: bytes(x ^ 0x5A for x in b),
    "empty": lambda b: b"",
    "not_an_object": lambda b: b"[1, 2, 3]\n",
    "missing_keys": lambda b: json.dumps({k: v for k, v in json.loads(b).items() if k != "best_top1"}).encode(),
    "string_number": lambda b: json.dumps({**json.loads(b), "last_top1": "71.3"}).encode(),
    "semantic_not_object": lambda b: json.dumps({**json.loads(b), "semantic": "oops"}).encode(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("which", ["kd", "ce"])  # the run itself, or its auto teacher
def test_damaged_result_is_rebuilt_from_last_pt(finished, copy_of, capsys, damage, which):
    store = copy_of(finished)
    folder = folder_of(store, which)
    before, original = numbers(folder), (folder / "result.json").read_bytes()
    (folder / "result.json").write_bytes(DAMAGE[damage](original))
    assert launch(store, "task=tables", f"results_dir={store.parent / 'res'}") == 0
    out = capsys.readouterr()
    assert f"{folder / 'result.json'}: damaged: result.json " in out.out + out.err
    assert launch(store, *(KD if which == "kd" else [*BASE, "method=at"])) == 0  # a new student needs the teacher
    assert numbers(folder) == before
    assert (folder / "result.json.corrupt").read_bytes() == DAMAGE[damage](original)
    assert_same_model(folder / "model.pt", finished / folder.relative_to(store) / "model.pt")


def test_damaged_result_without_a_complete_checkpoint_is_one_line_and_not_retrained(finished, copy_of, capsys):
    store = copy_of(finished)
    folder = folder_of(store, "kd")
    (folder / "result.json").write_bytes(b"{")
    (folder / "last.pt").unlink()
    assert launch(store, *KD) == 2
    line = one_error_line(capsys)
    assert "result.json is not valid JSON" in line and "no last.pt" in line and str(folder) in line
    assert (folder / "result.json").read_bytes() == b"{" and (folder / "metrics.jsonl").exists()


def test_an_unfinished_run_with_a_damaged_result_json_resumes(stopped, finished, copy_of, capsys):
    """A result.json beside a last.pt short of the end (a copy, a hand edit): the run never finished, so a relaunch
    sets the file aside and trains on from last.pt to the uninterrupted numbers; nothing says "delete"."""
    store = copy_of(stopped)
    folder = folder_of(store, "kd")
    (folder / "result.json").write_bytes(b'{"run_id": ')
    assert main([f"store={store}", *KD, "task=plan"]) == 0
    assert "delete" not in capsys.readouterr().out
    assert launch(store, *KD) == 0
    out = capsys.readouterr()
    assert "holds epoch 1 of 2: the run is unfinished; resuming it" in out.out + out.err
    assert numbers(folder) == numbers(folder_of(finished, "kd"))
    assert (folder / "result.json.corrupt").read_bytes() == b'{"run_id": '


def flip_low_bit(path: Path) -> None:
    """A bad disk's damage: one low bit in the middle of the file (tensor data), the size unchanged."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


MODEL_DAMAGE = {"deleted": Path.unlink, "truncated": lambda p: p.write_bytes(p.read_bytes()[:1000]),
                "flipped": flip_low_bit}
MODEL_SAYS = {"deleted": "model.pt is missing", "truncated": "model.pt is truncated",
              "flipped": "model.pt does not match its SHA-256 in result.json (damaged in place)"}


@pytest.fixture(scope="module")
def with_at_student(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished store plus an AT student of the same teacher, trained from the undamaged teacher."""
    store = tmp_path_factory.mktemp("with_at") / "runs"
    shutil.copytree(finished, store)
    assert launch(store, *BASE, "method=at") == 0
    return store


@pytest.mark.parametrize("damage", sorted(MODEL_DAMAGE))
@pytest.mark.parametrize("which", ["kd", "ce"])  # the run itself, or the auto teacher a new student reads
def test_damaged_model_pt_is_noticed_and_rebuilt(finished, with_at_student, copy_of, capsys, damage, which):
    store = copy_of(finished)
    folder = folder_of(store, which)
    before = numbers(folder)
    model = folder / "model.pt"
    MODEL_DAMAGE[damage](model)
    assert launch(store, "task=tables", f"results_dir={store.parent / 'res'}") == 0
    out = capsys.readouterr()
    assert f"{folder}: damaged: {MODEL_SAYS[damage]}" in out.out + out.err
    assert main([f"store={store}", *KD, "task=plan"]) == 0
    assert "rebuilds it from last.pt" in capsys.readouterr().out or which == "ce"
    assert launch(store, *(KD if which == "kd" else [*BASE, "method=at"])) == 0  # a new student needs the teacher
    assert numbers(folder) == before
    assert model.read_bytes() == (finished / folder.relative_to(store) / "model.pt").read_bytes()
    if damage != "deleted":
        assert (folder / "model.pt.corrupt").exists()  # the damaged file is kept beside its rebuilt copy
    if which == "ce":  # the new student trained from the rebuilt teacher: the numbers of an undamaged store
        at = folder_of(store, "at")
        reference = with_at_student / at.relative_to(store)
        assert (at / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
        teacher_sha = json.loads((at / "result.json").read_text())["teacher_info"]["sha256"]
        assert teacher_sha == json.loads((folder / "result.json").read_text())["sha256"]["model.pt"]


def test_a_flipped_bit_in_best_pt_is_rebuilt_when_the_best_epoch_is_the_last(finished, copy_of, capsys):
    store = copy_of(finished)
    folder = folder_of(store, "kd")
    before, best = numbers(folder), (folder / "best.pt").read_bytes()
    assert before["best_epoch"] == json.loads((folder / "result.json").read_text())["epochs"]  # the tiny run's
    flip_low_bit(folder / "best.pt")
    assert launch(store, "task=tables", f"results_dir={store.parent / 'res'}") == 0
    out = capsys.readouterr().out
    assert f"{folder}: damaged: best.pt does not match its SHA-256" in out and "not counted" in out
    assert launch(store, *KD) == 0
    assert "best.pt rebuilt from last.pt: byte for byte the file it recorded" in capsys.readouterr().out
    assert (folder / "best.pt").read_bytes() == best and numbers(folder) == before


def test_a_flipped_bit_in_best_pt_of_an_earlier_epoch_is_one_line_saying_to_retrain(finished, copy_of, capsys):
    """A run whose best epoch was not its last (made so here: its record and last.pt say epoch 1, consistently,
    hashes included): last.pt holds other weights than best.pt did, so nothing can rebuild it."""
    store = copy_of(finished)
    folder = folder_of(store, "kd")
    ckpt = torch.load(folder / "last.pt", weights_only=True)
    ckpt["state"]["best_epoch"] = 1
    torch.save(ckpt, folder / "last.pt")
    rec = json.loads((folder / "result.json").read_text())
    rec["best_epoch"] = 1
    rec["sha256"]["last.pt"] = hashlib.sha256((folder / "last.pt").read_bytes()).hexdigest()
    (folder / "result.json").write_text(json.dumps(rec))
    flip_low_bit(folder / "best.pt")
    assert launch(store, *KD) == 2
    line = one_error_line(capsys)
    assert "best.pt does not match its SHA-256" in line and "last.pt cannot rebuild best.pt" in line
    assert "the best was epoch 1" in line and f"delete {str(folder)!r} to train the run again" in line


def test_a_garbled_metrics_row_is_reported_not_counted_and_rewritten_by_a_relaunch(finished, copy_of, capsys):
    store = copy_of(finished)
    folder = folder_of(store, "kd")
    rows = (folder / "metrics.jsonl").read_bytes()
    (folder / "metrics.jsonl").write_bytes(rows.replace(b'"epoch": 1', b'"epoch": \x00', 1))
    res = store.parent / "res"
    assert launch(store, "task=tables", f"results_dir={res}") == 0
    out = capsys.readouterr().out
    assert f"{folder}: damaged: metrics.jsonl does not match its SHA-256" in out
    assert "kd" not in set(__import__("pandas").read_csv(res / "runs.csv")["method"])
    assert launch(store, *KD) == 0
    assert (folder / "metrics.jsonl").read_bytes() == rows


def test_a_record_written_before_the_hashes_still_works_and_gets_them(finished, copy_of, capsys):
    store = copy_of(finished)
    folder = folder_of(store, "kd")
    rec = json.loads((folder / "result.json").read_text())
    hashes = rec.pop("sha256")
    (folder / "result.json").write_text(json.dumps(rec))
    assert launch(store, "task=tables", f"results_dir={store.parent / 'res'}") == 0
    assert "damaged" not in capsys.readouterr().out
    assert launch(store, *KD) == 0  # finished: not trained again, but its record now vouches for its files
    assert json.loads((folder / "result.json").read_text())["sha256"] == hashes


# ----------------------------------------------------------------------------- damaged last.pt / metrics.jsonl
def _hostile_checkpoint(path: Path) -> None:
    torch.save({"state": {"epoch": 1}, "payload": shutil.rmtree}, path)  # a global outside the allow-list


LAST_PT_DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:5000]),
    "garbled": lambda p: p.write_bytes(bytes(x ^ 0x5A for x in p.read_bytes())),
    "hostile": _hostile_checkpoint,
}


@pytest.mark.parametrize("damage", sorted(LAST_PT_DAMAGE))
def test_unreadable_last_pt_restarts_the_run_and_keeps_the_file_aside(finished, stopped, copy_of, capfd, damage):
    store = copy_of(stopped)
    folder = folder_of(store, "kd")
    LAST_PT_DAMAGE[damage](folder / "last.pt")
    assert launch(store, *KD) == 0
    assert (folder / "last.pt.corrupt").exists()
    warnings = [line for line in capfd.readouterr().out.splitlines() if "last.pt is unreadable" in line]
    assert len(warnings) == 1 and "Weights only load failed" not in warnings[0], warnings
    assert "\x1b" not in warnings[0], repr(warnings[0])
    if damage == "hostile":
        assert "Unsupported global: shutil.rmtree" in warnings[0]
    reference = finished / folder.relative_to(store)
    assert numbers(folder) == numbers(reference)
    assert_same_model(folder / "model.pt", reference / "model.pt")
    assert (folder / "metrics.jsonl").read_text().count("\n") == 2


METRICS_DAMAGE = {
    "non_object_line": lambda t: t.replace("\n", "\n[1, 2]\n", 1),
    "non_utf8": lambda t: t + "\udcff",
    "garbled_row": lambda t: "#" + t[1:],
    "deleted_row": lambda t: "",
}


@pytest.mark.parametrize("damage", sorted(METRICS_DAMAGE))
def test_damaged_metrics_are_rebuilt_from_the_checkpoint(finished, stopped, copy_of, damage):
    store = copy_of(stopped)
    folder = folder_of(store, "kd")
    path = folder / "metrics.jsonl"
    path.write_bytes(METRICS_DAMAGE[damage](path.read_text()).encode("utf-8", errors="surrogateescape"))
    assert launch(store, *KD) == 0
    reference = finished / folder.relative_to(store)
    assert numbers(folder) == numbers(reference)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [{k: v for k, v in r.items() if "time" not in k} for r in rows] == \
           [{k: v for k, v in r.items() if "time" not in k} for r in ref_rows]


# ----------------------------------------------------------------------------- the tables on bad records
def test_tables_report_a_bad_record_and_carry_on(finished, copy_of, capsys):
    store = copy_of(finished)
    folder = folder_of(store, "kd")
    rec = json.loads((folder / "result.json").read_text())
    (folder / "result.json").write_text(json.dumps({**rec, "last_top1": "n/a"}))
    assert launch(store, "task=tables", "tables.metric=last", f"results_dir={store.parent / 'res'}") == 0
    out = capsys.readouterr()
    assert "has malformed last_top1" in out.out + out.err
    assert "resnet8" in out.out  # the teacher's (ce) row is still there


# ----------------------------------------------------------------------------- the disk and permissions
@pytest.fixture
def small_disk(tmp_path: Path):
    """A real file system of 1200 KiB (tmpfs), for a real ENOSPC."""
    with small_tmpfs(tmp_path / "small_disk", "1200k") as mnt:
        yield mnt


def test_disk_full_is_one_line_naming_the_file(finished, small_disk, capsys):
    teacher = folder_of(finished, "ce")
    store = small_disk / "runs"
    dest = store / teacher.relative_to(finished)
    dest.mkdir(parents=True)
    for name in ("result.json", "model.pt", "best.pt", "metrics.jsonl", "config.json"):  # a finished teacher
        shutil.copy(teacher / name, dest / name)  # without its last.pt: ≈ 680 KB
    assert launch(store, *KD) == 2  # the student's best.pt (≈ 340 KB) fits, its first last.pt (≈ 660 KB) does not
    line = one_error_line(capsys)
    assert "disk is full" in line and str(folder_of(store, "kd") / "last.pt") in line
    assert numbers(dest) == numbers(teacher)
    assert not list(folder_of(store, "kd").glob(".*.tmp"))  # the failed write cleaned up after itself


def test_an_uncreatable_store_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert launch(blocker / "runs", *CE) == 2
    line = one_error_line(capsys)
    assert str(blocker) in line and "not a folder" in line


@pytest.fixture
def read_only(tmp_path: Path):
    """Make a copy of a store read-only for real: a read-only bind mount as root (root ignores file modes),
    file modes otherwise."""
    mounted: list[Path] = []

    def make(src: Path) -> Path:
        dest = tmp_path / "ro" / "runs"
        shutil.copytree(src, dest)
        if os.geteuid() == 0:
            for cmd in (["mount", "--bind", str(dest), str(dest)], ["mount", "-o", "remount,ro,bind", str(dest)]):
                if subprocess.run(cmd, capture_output=True).returncode != 0:
                    pytest.skip("a read-only store needs a read-only bind mount as root, and mount is not permitted")
                mounted.append(dest)
        else:
            for p in [dest, *dest.rglob("*")]:
                p.chmod(0o555 if p.is_dir() else 0o444)
        return dest

    yield make
    for path in mounted[:1]:
        subprocess.run(["umount", "-l", str(path)], check=False)
    for p in [tmp_path, *tmp_path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_finished_run_in_a_read_only_store_is_used_and_new_work_is_one_line(finished, read_only, tmp_path, capsys):
    store = read_only(finished)
    hydra_dir = f"hydra.run.dir={tmp_path / 'hydra'}"
    assert launch(store, *KD, hydra_dir) == 0
    assert launch(store, *BASE, "method=at", hydra_dir) == 2
    line = one_error_line(capsys)
    assert str(store) in line and ("read-only" in line or "permission denied" in line)


# ----------------------------------------------------------------------------- killed during a checkpoint write
BLOCKING_WRITE = """
import os, sys, time
real_fsync = os.fsync
marker = sys.argv[1]
writes = 0
def fsync(fd):
    global writes
    if ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):
        writes += 1
        if writes == 2:  # the second epoch's checkpoint: a good last.pt exists, its replacement is half written
            open(marker, "w").close()
            time.sleep(600)
    return real_fsync(fd)
os.fsync = fsync
from oracle_kd.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_killed_during_a_checkpoint_write_leaves_no_temp_file_after_relaunch(finished, tmp_path):
    store, marker = tmp_path / "runs", tmp_path / "blocked"
    shutil.copytree(folder_of(finished, "ce").parents[3], store, dirs_exist_ok=True)  # the teacher only
    shutil.rmtree(store / "digits" / "kd", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = tmp_path / "blocking_write.py"
    driver.write_text(BLOCKING_WRITE)
    proc = subprocess.Popen([sys.executable, str(driver), str(marker), f"store={store}", *KD,
                             f"hydra.run.dir={tmp_path / 'h'}"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()  # it ended before reaching the point to kill it at
        assert time.monotonic() < deadline, "too slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = folder_of(store, "kd")
    assert list(folder.glob(".last.pt.*.tmp")), "the kill should leave the half-written temp file"
    assert launch(store, *KD) == 0
    assert not list(folder.glob(".*.tmp"))
    reference = finished / folder.relative_to(store)
    assert numbers(folder) == numbers(reference)
    assert_same_model(folder / "model.pt", reference / "model.pt")


# ----------------------------------------------------------------------------- smaller promises
def test_plan_does_not_promise_a_resume_without_last_pt(stopped, copy_of, capsys):
    store = copy_of(stopped)
    assert main([f"store={store}", *KD, "task=plan"]) == 0
    assert "resumable after epoch 1" in capsys.readouterr().out
    (folder_of(store, "kd") / "last.pt").unlink()
    assert main([f"store={store}", *KD, "task=plan"]) == 0
    out = capsys.readouterr().out
    assert "resumable" not in out.split("[teacher")[0] and "new" in out


def test_relaunching_with_the_same_stop_after_epoch_trains_nothing(stopped, copy_of):
    store = copy_of(stopped)
    folder = folder_of(store, "kd")
    before = (folder / "last.pt").read_bytes()
    assert launch(store, *KD, "stop_after_epoch=1") == 0
    assert (folder / "last.pt").read_bytes() == before
    assert (folder / "metrics.jsonl").read_text().count("\n") == 1


def test_only_the_process_that_trains_a_teacher_announces_it(tmp_path, capfd):
    store = tmp_path / "runs"
    assert launch(store, *KD) == 0
    assert capfd.readouterr().out.count("training it first") == 1
    assert launch(store, *BASE, "method=at") == 0  # the teacher is in the store now
    assert "training it first" not in capfd.readouterr().out


def test_a_hostile_teacher_checkpoint_is_one_plain_line(tmp_path, capsys):
    path = tmp_path / "hostile.pt"
    _hostile_checkpoint(path)
    assert launch(tmp_path / "runs", *KD, f"teacher.checkpoint={path}") == 2
    line = one_error_line(capsys)
    assert f"checkpoint {str(path)!r} is refused: it needs the global shutil.rmtree" in line and "\x1b" not in line
    assert "could run code" in line and "weights_only=False" not in line and "will likely succeed" not in line


def test_a_run_that_fails_on_a_data_error_is_listed_as_failed(tmp_path, capsys):
    from helpers.imagefolder_fixtures import write_tiny_imagenet

    tree = write_tiny_imagenet(tmp_path / "data", classes=3, per_class=4, val_per_class=2)
    Path(tree["train"][3][0]).write_bytes(b"\xff\xd8\xff not a JPEG")  # a file damaged on disk
    store = tmp_path / "runs"
    args = [f"store={store}", "dataset=tiny_imagenet", f"dataset.root={tmp_path / 'data'}", "dataset.workers=0",
            "student=resnet8", "method=ce", "train=quick", "train.epochs=1", "progress=false", "hardware=cpu"]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "cannot decode image" in line and tree["train"][3][0] in line
    folder = folder_of(store, "ce")
    assert "cannot decode image" in json.loads((folder / "failure.json").read_text())["error"]
    assert main([f"store={store}", "task=tables", f"results_dir={tmp_path / 'res'}"]) == 0
    out = capsys.readouterr()
    assert f"{folder}: failed: cannot decode image" in out.out + out.err


def test_a_run_stopped_by_the_schedulers_time_limit_is_unfinished_not_failed(tmp_path, monkeypatch, capsys):
    """submitit raises its UncompletedJobError inside training when a SLURM job reaches its time limit and may not
    be requeued again: the run keeps its last.pt, writes no failure.json, and a relaunch resumes it."""
    from submitit.core.utils import UncompletedJobError

    from oracle_kd.engine import trainer

    save = trainer.Member.save_epoch

    def time_limit_after_epoch_1(self, row):
        save(self, row)
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    store = tmp_path / "runs"
    monkeypatch.setattr(trainer.Member, "save_epoch", time_limit_after_epoch_1)
    assert launch(store, *CE) == 2
    assert "error: a SLURM job ended without its result (UncompletedJobError: Job not requeued" in \
        capsys.readouterr().err
    monkeypatch.setattr(trainer.Member, "save_epoch", save)
    folder = folder_of(store, "ce")
    assert (folder / "last.pt").exists() and not (folder / "failure.json").exists()
    assert main([f"store={store}", *CE, "task=plan"]) == 0
    assert "plan: resumable after epoch 1 " in capsys.readouterr().out
    assert launch(store, *CE) == 0
    assert json.loads((folder / "result.json").read_text())["epochs"] == 2
