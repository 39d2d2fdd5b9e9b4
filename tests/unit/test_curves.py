"""TensorBoard curves (`engine/curves.py`), read back with TensorBoard's own EventAccumulator: every key of the
metrics row is a scalar tag at step = epoch, the semantic config is written once as hparams, and a resumed
run (one killed after logging an epoch it never checkpointed) holds every step exactly once, with the values
of the authoritative rows."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402

from oracle_kd.engine.curves import TB_DIR, Curves, TensorBoardCurves, flat_hparams  # noqa: E402
from oracle_kd.engine.loggers import open_curves  # noqa: E402
from oracle_kd.errors import ConfigError  # noqa: E402

SEMANTIC = {"dataset": {"name": "digits", "crop_pad": 4, "flip": True, "test_fraction": 0.25}, "student": "resnet20",
            "teacher": {"arch": "resnet56", "source": "auto", "run_id": "abc123def456"},
            "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9, "extra": None},
            "train": {"epochs": 5, "lr": 0.05, "milestones": [3, 4], "nesterov": False}, "seed": 0}
FLAT = {"dataset.name": "digits", "dataset.crop_pad": 4, "dataset.flip": True, "dataset.test_fraction": 0.25,
        "student": "resnet20", "teacher.arch": "resnet56", "teacher.source": "auto", "teacher.run_id": "abc123def456",
        "method.name": "kd", "method.temperature": 4.0, "method.alpha": 0.9, "train.epochs": 5, "train.lr": 0.05,
        "train.nesterov": False, "seed": 0}
STORED = {k: float(v) if isinstance(v, bool) else v for k, v in FLAT.items()}  # torch writes bools as numbers
TAGS = {"lr", "train_ce", "train_kd", "train_loss", "train_top1", "test_top1", "test_top5", "test_loss", "epoch_time_s"}


def row(epoch: int, shift: float = 0.0) -> dict:
    """A metrics row as `Trainer.evaluate` builds it (`shift` makes another launch's numbers for the epoch)."""
    return {"epoch": epoch, "lr": 0.05 / epoch, "train_ce": 2.0 / epoch + shift, "train_kd": 1.0 / epoch + shift,
            "train_loss": 3.0 / epoch + shift, "train_top1": 50.0 + epoch + shift, "test_top1": 40.0 + epoch + shift,
            "test_top5": 80.0 + epoch / 10 + shift, "test_loss": 1.5 / epoch + shift, "epoch_time_s": 2.0 + epoch}


def accumulate(folder: Path) -> EventAccumulator:
    """Everything in <folder>/tb, nothing dropped: no purge of out-of-order steps, no reservoir sampling (so
    a duplicated or stale step would show)."""
    acc = EventAccumulator(str(folder / TB_DIR), size_guidance={"scalars": 0, "tensors": 0},
                           purge_orphaned_data=False)
    acc.Reload()
    return acc


def curves_of(acc: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_curves(folder: Path, rows: list[dict]) -> None:
    """The tags are the rows' keys, each with one point per row at step = epoch, in order, no step twice."""
    got = curves_of(accumulate(folder))
    assert set(got) == (TAGS if rows else set())
    for tag, points in got.items():
        steps = [s for s, _ in points]
        assert steps == [r["epoch"] for r in rows], (tag, steps)
        assert [v for _, v in points] == pytest.approx([r[tag] for r in rows], rel=1e-6), tag


def raw_tag_counts(folder: Path) -> dict[str, int]:
    """How often each tag was written, over every event file of <folder>/tb (the raw records)."""
    counts: dict[str, int] = {}
    for path in sorted((folder / TB_DIR).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                counts[value.tag] = counts.get(value.tag, 0) + 1
    return counts


def stored_hparams(acc: EventAccumulator) -> dict:
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in hparams.items()}


def launch(folder: Path, kept: list[dict], new: list[dict], close: bool = True) -> Curves:
    """One launch as the trainer makes it: open with the rows last.pt kept, log each new epoch, close."""
    curves = open_curves("tensorboard", folder, kept, SEMANTIC)
    for r in new:
        curves.log(r)
    if close:
        curves.close()
    return curves


def test_every_row_key_is_a_curve_at_step_epoch_and_the_config_is_hparams(tmp_path: Path) -> None:
    rows = [row(e) for e in (1, 2, 3)]
    curves = launch(tmp_path, [], rows)
    assert isinstance(curves, TensorBoardCurves)
    assert_curves(tmp_path, rows)
    acc = accumulate(tmp_path)
    hp = stored_hparams(acc)
    assert hp.keys() == FLAT.keys()
    assert hp == pytest.approx(STORED)
    assert raw_tag_counts(tmp_path)["_hparams_/session_start_info"] == 1
    curves.close()  # idempotent


def test_resume_after_a_kill_rewrites_the_curves_from_the_checkpoint_rows(tmp_path: Path) -> None:
    """Launch 1 logs epochs 1-4 but dies before checkpointing 4; launch 2 resumes from 3 and retrains 4 (other
    numbers) and 5. Every step appears once, epoch 4 with launch 2's values, hparams once, one event file."""
    first = [row(e) for e in (1, 2, 3, 4)]
    launch(tmp_path, [], first)  # on disk as after a kill: log() flushed epoch 4
    assert_curves(tmp_path, first)
    kept = first[:3]  # last.pt holds epochs 1-3
    second = [row(4, shift=0.5), row(5, shift=0.5)]
    launch(tmp_path, kept, second)
    assert_curves(tmp_path, kept + second)
    counts = raw_tag_counts(tmp_path)
    assert {counts[t] for t in TAGS} == {5}
    assert counts["_hparams_/session_start_info"] == 1
    assert len(list((tmp_path / TB_DIR).iterdir())) == 1
    assert stored_hparams(accumulate(tmp_path)) == pytest.approx(STORED)


def test_appending_a_launch_without_the_rewrite_would_be_caught(tmp_path: Path) -> None:
    """The checks above have teeth: a second launch that only appends its epochs (no rewrite) leaves the stale
    epoch 4 beside the new one, and the same readers see it."""
    first = [row(e) for e in (1, 2, 3, 4)]
    launch(tmp_path, [], first)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path / TB_DIR)) as naive:
        naive.add_scalar("test_top1", row(4, 0.5)["test_top1"], global_step=4)
    steps = [s for s, _ in curves_of(accumulate(tmp_path))["test_top1"]]
    assert sorted(steps) == [1, 2, 3, 4, 4]
    with pytest.raises(AssertionError):
        assert_curves(tmp_path, first[:3] + [row(4, 0.5)])


def test_a_restart_from_epoch_0_and_a_rebuild_replay_exactly_the_kept_rows(tmp_path: Path) -> None:
    rows = [row(e) for e in (1, 2, 3)]
    launch(tmp_path, [], rows)
    launch(tmp_path, [], [])  # last.pt set aside as corrupt: the run restarts, its old curves go
    assert_curves(tmp_path, [])
    launch(tmp_path, rows, [])  # a record rebuilt from a final last.pt: no training, the curves are the rows
    assert_curves(tmp_path, rows)


def test_replayed_points_are_spaced_by_their_epoch_time(tmp_path: Path) -> None:
    rows = [row(e) for e in (1, 2, 3)]
    before = time.time()
    launch(tmp_path, rows, [])
    walls = [e.wall_time for e in accumulate(tmp_path).Scalars("test_top1")]
    assert [b - a for a, b in zip(walls, walls[1:])] == pytest.approx([r["epoch_time_s"] for r in rows[1:]], abs=1e-3)
    assert before - 1 <= walls[-1] <= time.time() + 1


def test_a_row_is_never_written_twice_within_a_launch(tmp_path: Path) -> None:
    rows = [row(1), row(2)]
    curves = launch(tmp_path, rows, [], close=False)
    curves.log(row(2, shift=9.0))
    curves.log(row(3))
    curves.close()
    curves.log(row(4))  # after close: ignored
    assert_curves(tmp_path, [row(1), row(2), row(3)])


def test_off_and_non_main_processes_write_nothing(tmp_path: Path) -> None:
    for curves in (open_curves("none", tmp_path, [row(1)], SEMANTIC),
                   open_curves("tensorboard", tmp_path, [row(1)], SEMANTIC, main=False)):
        assert type(curves) is Curves
        curves.log(row(2))
        curves.close()
    assert not (tmp_path / TB_DIR).exists()


def test_missing_tensorboard_is_one_config_line_on_every_process(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    for main in (True, False):
        with pytest.raises(ConfigError) as info:
            open_curves("tensorboard", tmp_path, [], SEMANTIC, main=main)
        assert str(info.value) == "logger=tensorboard needs the tensorboard package: pip install oracle-kd[tensorboard]"
    assert type(open_curves("none", tmp_path, [], SEMANTIC)) is Curves
    with pytest.raises(ConfigError, match="is not one of: none, tensorboard, wandb, mlflow"):
        open_curves("neptune", tmp_path, [], SEMANTIC)
    assert not (tmp_path / TB_DIR).exists()


def test_flat_hparams_keeps_scalars_under_dotted_keys() -> None:
    assert flat_hparams(SEMANTIC) == FLAT
    assert flat_hparams({"a": {"b": {"c": 1}}, "nan": float("nan"), "teacher": None, "l": [1]}) == {"a.b.c": 1}
