"""Tiny-ImageNet / ImageNet folder datasets: scanning, labels, FolderLoader batches, determinism, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from helpers.imagefolder_fixtures import write_imagenet, write_tiny_imagenet
from oracle_kd.data import (
    BatchLoader,
    DataBundle,
    FileSet,
    FolderLoader,
    available_datasets,
    build_loader,
    load_dataset,
    normalize,
)
from oracle_kd.data.imagefolder import IMAGENET_MEAN, TINY_MEAN, TINY_STD
from oracle_kd.errors import DatasetError

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return root, write_tiny_imagenet(root, classes=3, per_class=4, val_per_class=2)


@pytest.fixture(scope="module")
def imnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imnet")
    return root, write_imagenet(root, classes=3, per_class=4, size=40)


def _batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- Tiny-ImageNet

def test_registered():
    assert {"tiny_imagenet", "imagenet"} <= set(available_datasets())


def test_tiny_labels_from_folders_and_annotations(tiny):
    root, w = tiny
    b = load_dataset("tiny_imagenet", root)
    assert b.kind == "folder" and isinstance(b.train, FileSet) and isinstance(b.test, FileSet)
    assert (b.num_classes, b.in_channels, b.image_size, b.mean, b.std) == (3, 3, 64, TINY_MEAN, TINY_STD)
    assert b.class_names == w["names"]
    assert list(zip(b.train.paths, b.train.labels.tolist())) == w["train"]
    assert list(zip(b.test.paths, b.test.labels.tolist())) == w["val"]  # annotation order, interleaved labels
    assert b.test.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_tiny_eval_batches_are_normalized_files_in_order(tiny):
    root, w = tiny
    b = load_dataset("tiny_imagenet", str(root))
    loader = build_loader(b, "test", batch_size=4, seed=0, device="cpu", workers=0)
    assert isinstance(loader, FolderLoader) and len(loader) == 2 and loader.num_samples == 6
    batches = _batches(loader, 0)
    assert [x.shape for x, _ in batches] == [(4, 3, 64, 64), (2, 3, 64, 64)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    assert torch.cat([y for _, y in batches]).tolist() == b.test.labels.tolist()
    expect = TF.pil_to_tensor(Image.open(w["val"][5][0]).convert("RGB"))
    assert torch.allclose(batches[1][0][1], normalize(expect, TINY_MEAN, TINY_STD))
    assert _same(batches, _batches(loader, 3))  # eval ignores the epoch


def test_tiny_grayscale_becomes_rgb_and_train_augments(tiny):
    root, w = tiny
    b = load_dataset("tiny_imagenet", root)
    gray = TF.pil_to_tensor(Image.open(w["train"][0][0]).convert("RGB"))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    loader = build_loader(b, "train", batch_size=5, seed=1, device="cpu", pad=4, flip=True, drop_last=True,
                          workers=0, channels_last=True)
    batches = _batches(loader, 0)
    assert len(loader) == len(batches) == 2  # 12 images, drop_last
    x, y = batches[0]
    assert x.shape == (5, 3, 64, 64) and x.is_contiguous(memory_format=torch.channels_last)
    # with padding, some crop shows a whole zero row or column (normalized to -mean/std); without, none does
    zero = normalize(torch.zeros(3, 1, 1, dtype=torch.uint8), TINY_MEAN, TINY_STD)

    def border(img: torch.Tensor) -> bool:
        z = (img == zero).all(0)
        return bool(z.all(0).any() or z.all(1).any())

    assert any(border(img) for xb, _ in batches for img in xb)
    (xp, _), = _batches(build_loader(b, "train", batch_size=12, seed=1, device="cpu", workers=0), 0)
    assert not any(border(img) for img in xp)

def test_tiny_train_deterministic_per_seed_epoch_and_worker_count(tiny):
    root, _ = tiny
    b = load_dataset("tiny_imagenet", root)
    kw = dict(batch_size=4, seed=3, device="cpu", pad=4, flip=True)
    a = build_loader(b, "train", workers=0, **kw)
    e0, e1 = _batches(a, 0), _batches(a, 1)
    assert _same(e0, _batches(a, 0)) and not _same(e0, e1)
    assert sorted(torch.cat([y for _, y in e0]).tolist()) == sorted(b.train.labels.tolist())
    w2 = build_loader(b, "train", workers=2, **kw)
    assert _same(_batches(w2, 1), e1)  # a "resumed" loader starting at epoch 1, decoded by 2 workers
    assert _same(_batches(w2, 0), e0)  # persistent workers: an earlier epoch after a later one
    other = build_loader(b, "train", workers=0, **{**kw, "seed": 4})
    assert not _same(_batches(other, 0), e0)


# ---------------------------------------------------------------- ImageNet

def test_imagenet_labels_shapes_and_eval_transform(imnet):
    root, w = imnet
    b = load_dataset("imagenet", root)
    assert (b.kind, b.num_classes, b.image_size, b.mean, b.class_names) == ("folder", 3, 224, IMAGENET_MEAN,
                                                                           w["wnids"])
    assert list(zip(b.train.paths, b.train.labels.tolist())) == w["train"]
    assert list(zip(b.test.paths, b.test.labels.tolist())) == w["val"]
    test = build_loader(b, "test", batch_size=4, seed=0, device="cpu", workers=0)
    (x0, y0), (x1, y1) = _batches(test, 0)
    assert x0.shape == (4, 3, 224, 224) and x1.shape == (2, 3, 224, 224)
    assert torch.cat([y0, y1]).tolist() == b.test.labels.tolist()
    img = Image.open(w["val"][0][0]).convert("RGB")
    expect = TF.pil_to_tensor(TF.center_crop(TF.resize(img, [256]), [224, 224]))
    assert torch.allclose(x0[0], normalize(expect, IMAGENET_MEAN, b.std))


def test_imagenet_train_cmyk_gray_and_determinism(imnet):
    root, w = imnet
    b = load_dataset("imagenet", root)
    assert {"CMYK", "L"} <= {Image.open(path).mode for path, _ in w["train"]}
    kw = dict(batch_size=6, seed=0, device="cpu", flip=True)
    a = build_loader(b, "train", workers=0, **kw)
    e0 = _batches(a, 0)
    assert [x.shape for x, _ in e0] == [(6, 3, 224, 224)] * 2
    assert all(torch.isfinite(x).all() for x, _ in e0)
    assert _same(e0, _batches(build_loader(b, "train", workers=2, **kw), 0))
    assert not _same(e0, _batches(a, 1))


# ---------------------------------------------------------------- build_loader on memory bundles

def test_build_loader_memory_bundle_matches_batchloader():
    b = load_dataset("digits", None)
    ms = dict(mean=b.mean, std=b.std, device="cpu")
    got = build_loader(b, "train", batch_size=64, seed=5, device="cpu", pad=2, flip=True, drop_last=True)
    ref = BatchLoader(b.train, batch_size=64, train=True, pad=2, flip=True, seed=5, drop_last=True, **ms)
    assert isinstance(got, BatchLoader) and _same(_batches(got, 2), _batches(ref, 2))
    got = build_loader(b, "test", batch_size=100, seed=5, device="cpu", pad=2, flip=True, drop_last=True)
    ref = BatchLoader(b.test, batch_size=100, train=False, **ms)
    assert len(got) == len(ref) and _same(_batches(got, 0), _batches(ref, 0))
    with pytest.raises(ValueError, match="split"):
        build_loader(b, "val", batch_size=1, seed=0, device="cpu")


def test_databundle_kind_checked(tiny):
    root, _ = tiny
    b = load_dataset("tiny_imagenet", root)
    with pytest.raises(ValueError, match="FileSet"):
        DataBundle(**{**b.__dict__, "kind": "memory"})


# ---------------------------------------------------------------- errors

def test_missing_folders_one_line(tmp_path):
    with pytest.raises(DatasetError) as exc:
        load_dataset("tiny_imagenet", tmp_path / "nowhere")
    msg = _one_line(exc)
    assert str((tmp_path / "nowhere" / "tiny-imagenet-200").resolve()) in msg and "dataset.root" in msg
    assert "tiny-imagenet-200.zip" in msg
    with pytest.raises(DatasetError) as exc:
        load_dataset("imagenet", tmp_path)
    msg = _one_line(exc)
    assert str(tmp_path.resolve() / "imagenet") in msg and "train/<wnid>" in msg and "dataset.root" in msg


def _no_wnids(f: Path, wnids: list[str]) -> list[str]:
    (f / "wnids.txt").unlink()
    return [str(f / "wnids.txt")]


def _no_annotations(f: Path, wnids: list[str]) -> list[str]:
    (f / "val" / "val_annotations.txt").unlink()
    return [str(f / "val" / "val_annotations.txt"), "no annotations"]


def _drop_last_annotation(f: Path) -> str:
    lines = (f / "val" / "val_annotations.txt").read_text().splitlines(keepends=True)
    return "".join(lines[:-1])


def _unlisted_val_image(f: Path, wnids: list[str]) -> list[str]:
    (f / "val" / "val_annotations.txt").write_text(_drop_last_annotation(f))
    return [str(f / "val" / "images" / "val_5.JPEG"), "no annotation"]


def _unknown_wnid(f: Path, wnids: list[str]) -> list[str]:
    (f / "val" / "val_annotations.txt").write_text(_drop_last_annotation(f) + "val_5.JPEG\tn12345678\t0\t0\t1\t1\n")
    return ["n12345678", "line 6", str(f / "wnids.txt")]


def _missing_val_image(f: Path, wnids: list[str]) -> list[str]:
    (f / "val" / "images" / "val_2.JPEG").unlink()
    return [str(f / "val" / "images" / "val_2.JPEG")]


def _empty_class(f: Path, wnids: list[str]) -> list[str]:
    for p in (f / "train" / wnids[1] / "images").iterdir():
        p.unlink()
    return [str(f / "train" / wnids[1] / "images")]


@pytest.mark.parametrize("damage", [_no_wnids, _no_annotations, _unlisted_val_image, _unknown_wnid,
                                    _missing_val_image, _empty_class], ids=lambda f: f.__name__.strip("_"))
def test_tiny_malformed_one_line(tiny, tmp_path, damage):
    """Each kind of damage to a Tiny-ImageNet tree is one line naming the file (and what is wrong)."""
    f = _copy(tiny[1]["folder"], tmp_path / "tiny-imagenet-200")
    expected = damage(f, tiny[1]["wnids"])
    with pytest.raises(DatasetError) as exc:
        load_dataset("tiny_imagenet", f.parent)
    msg = _one_line(exc)
    assert all(part in msg for part in expected), (msg, expected)


def test_imagenet_malformed_one_line(imnet, tmp_path):
    src = imnet[1]["folder"]
    f = _copy(src, tmp_path / "flat" / "imagenet")
    for d in list((f / "val").iterdir()):
        for p in d.iterdir():
            p.rename(f / "val" / p.name)
        d.rmdir()
    with pytest.raises(DatasetError) as exc:
        load_dataset("imagenet", f.parent)
    assert str(f / "val") in _one_line(exc) and "unsorted" in str(exc.value)

    f = _copy(src, tmp_path / "extra" / "imagenet")
    (f / "val" / "n00000042").mkdir()
    with pytest.raises(DatasetError) as exc:
        load_dataset("imagenet", f.parent)
    assert str(f / "val" / "n00000042") in _one_line(exc)


def test_corrupt_image_one_line_from_worker(tiny, tmp_path):
    f = _copy(tiny[1]["folder"], tmp_path / "corrupt" / "tiny-imagenet-200")
    bad = f / "val" / "images" / "val_1.JPEG"
    bad.write_bytes(b"not a jpeg")
    b = load_dataset("tiny_imagenet", f.parent)
    with pytest.raises(DatasetError) as exc:
        _batches(build_loader(b, "test", batch_size=2, seed=0, device="cpu", workers=1), 0)
    assert str(bad) in _one_line(exc) and "cannot decode" in str(exc.value)


# ---------------------------------------------------------------- yamls

@pytest.mark.parametrize("name", ["tiny_imagenet", "imagenet"])
def test_yaml_keys(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.name == name
    assert set(cfg) <= {"name", "root", "crop_pad", "flip", "test_fraction", "workers"}
