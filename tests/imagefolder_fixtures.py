"""Write tiny Tiny-ImageNet / ImageNet trees in the real on-disk layouts, with real JPEG files.

Each writer returns what it wrote (paths and labels per split) so tests can check loaders against it.
Images are random noise: JPEG is lossy, so tests compare labels, shapes and statistics, not pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["write_tiny_imagenet", "write_imagenet", "wnid"]


def wnid(k: int) -> str:
    """A WordNet-style id (n + 8 digits), in descending order so sorted() order != writing order."""
    return f"n{99999999 - 17 * k:08d}"


def _noise(rng: np.random.Generator, w: int, h: int, mode: str) -> Image.Image:
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    return img.convert("CMYK") if mode == "CMYK" else img


def write_tiny_imagenet(root: str | Path, classes: int = 3, per_class: int = 4, val_per_class: int = 2,
                        seed: int = 0) -> dict[str, Any]:
    """<root>/tiny-imagenet-200/ as the official zip extracts: wnids.txt, words.txt (with extra wnids, like
    the real 82k-line file), train/<wnid>/{images/*.JPEG, <wnid>_boxes.txt}, val/images/*.JPEG +
    val/val_annotations.txt (val labels interleaved, not grouped), test/images/*.JPEG (unlabelled).
    64x64 RGB JPEGs; the first train image is grayscale ('L').

    Returns {"folder", "wnids", "names", "train": [(path, label)], "val": [(path, label)]} (annotation order).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = [wnid(k) for k in range(classes)]
    names = [f"class {k}, synonym" for k in range(classes)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (folder / "words.txt").write_text("n00000001\tentity\n" + "".join(f"{w}\t{n}\n" for w, n in zip(wnids, names)))
    train = []
    for c, w in enumerate(wnids):
        d = folder / "train" / w / "images"
        d.mkdir(parents=True)
        boxes = []
        for i in range(per_class):
            p = d / f"{w}_{i}.JPEG"
            _noise(rng, 64, 64, "L" if c == 0 and i == 0 else "RGB").save(p, "JPEG", quality=90)
            train.append((str(p.resolve()), c))
            boxes.append(f"{p.name}\t0\t0\t63\t63\n")
        (folder / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    val_dir = folder / "val" / "images"
    val_dir.mkdir(parents=True)
    labels = [c for _ in range(val_per_class) for c in range(classes)]  # interleaved: 0 1 2 0 1 2 ...
    val, lines = [], []
    for k, c in enumerate(labels):
        p = val_dir / f"val_{k}.JPEG"
        _noise(rng, 64, 64, "RGB").save(p, "JPEG", quality=90)
        val.append((str(p.resolve()), c))
        lines.append(f"{p.name}\t{wnids[c]}\t1\t2\t60\t61\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    (folder / "test" / "images").mkdir(parents=True)
    _noise(rng, 64, 64, "RGB").save(folder / "test" / "images" / "test_0.JPEG", "JPEG")
    return {"folder": folder.resolve(), "wnids": wnids, "names": names, "train": train, "val": val}


def write_imagenet(root: str | Path, classes: int = 3, per_class: int = 4, size: int = 40,
                   val_per_class: int = 2, seed: int = 0) -> dict[str, Any]:
    """<root>/imagenet/{train,val}/<wnid>/*.JPEG (val sorted into class folders, valprep.sh style).

    Small non-square images (size x ~1.5 size, varying); the first train image is CMYK and the second
    grayscale, as a few real ILSVRC files are. Classes are written in a non-sorted order; labels follow
    sorted(wnids). Returns {"folder", "wnids" (sorted), "train": [(path, label)], "val": [...]} in the
    loader's order (class, then file name).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "imagenet"
    wnids = [wnid(k) for k in range(classes)]
    order = sorted(wnids)
    out: dict[str, Any] = {"folder": folder.resolve(), "wnids": order, "train": [], "val": []}
    n = 0
    for w in wnids:
        for split, count in (("train", per_class), ("val", val_per_class)):
            d = folder / split / w
            d.mkdir(parents=True)
            for i in range(count):
                mode = {0: "CMYK", 1: "L"}.get(n, "RGB") if split == "train" else "RGB"
                n += split == "train"
                width, height = (size + 3 * i, size * 3 // 2) if i % 2 else (size * 3 // 2, size + i)
                p = d / (f"{w}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{order.index(w):04d}{i}.JPEG")
                _noise(rng, width, height, mode).save(p, "JPEG", quality=85)
                out[split].append((str(p.resolve()), order.index(w)))
    for split in ("train", "val"):
        out[split].sort(key=lambda t: (t[1], Path(t[0]).name))
    return out
