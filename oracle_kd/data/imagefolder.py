"""Folder datasets too large for memory (Tiny-ImageNet, ImageNet): scanned into FileSets, decoded by a
DataLoader's worker processes, augmented per sample, normalized on the device.

Determinism: every sample of an epoch gets its crop/flip draws from its own seed, and the epoch's order
and those seeds come from one CPU generator seeded by (seed, epoch). A batch therefore depends on neither
the worker count, nor which worker decodes it, nor the epochs before it (persistent workers keep their
own RNG across epochs, so seeding per worker would not give that) - a resumed run sees exactly the
batches an uninterrupted one would have, on CPU and CUDA alike.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from oracle_kd.core.batch import Batch, batch_key
from oracle_kd.data.augment import normalize
from oracle_kd.data.batching import EPOCH_STRIDE, Batching
from oracle_kd.data.types import DataBundle, FileSet, FolderTransforms
from oracle_kd.errors import DatasetError

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_DIR = "tiny-imagenet-200"
TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2764, 0.2689, 0.2816)
IMAGENET_URL = "https://image-net.org/download.php"
IMAGENET_DIR = "imagenet"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)  # torchvision's RandomResizedCrop defaults


# ----------------------------------------------------------------------------- scanning
def _images_in(folder: Path) -> list[str]:
    """Sorted absolute paths of the image files directly in `folder` (os.scandir: ImageNet's 1.28M files)."""
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())
    return [str(folder / n) for n in names]


def _read_lines(path: Path, what: str, how: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{what} {path.name} missing at {path}: {how}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}: {how}") from None


def _root_folder(root: str | Path, sub: str, archive: str, how: str) -> Path:
    root = Path(root).expanduser().resolve()
    folder = root / sub
    if not folder.is_dir():
        hint = f" ({archive} is there but not extracted)" if (root / archive).is_file() else ""
        raise DatasetError(f"dataset folder {sub}/ not found at {folder}{hint}: {how}")
    return folder


def load_tiny_imagenet(root: str | Path, *, seed: int = 0, test_fraction: float = 0.25) -> DataBundle:
    """Tiny-ImageNet-200 as extracted from the official zip, read in place: classes in wnids.txt order,
    train from train/<wnid>/images/, test = the labelled val/ split (labels from val_annotations.txt;
    the unlabelled test/ is ignored). seed/test_fraction do not apply (official split)."""
    how = (f"dataset.download=true fetches it (or download and extract {TINY_URL} into the dataset root "
           f"yourself), or set dataset.root=<the folder that contains {TINY_DIR}/>")
    folder = _root_folder(root, TINY_DIR, "tiny-imagenet-200.zip", how)
    how = f"re-extract {TINY_URL} (the folder is read as the zip lays it out)"
    wnids_path = folder / "wnids.txt"
    wnids = [w.strip() for w in _read_lines(wnids_path, "class list", how) if w.strip()]
    if not wnids:
        raise DatasetError(f"class list {wnids_path} is empty: {how}")
    if len(set(wnids)) != len(wnids):
        dup = next(w for w in wnids if wnids.count(w) > 1)
        raise DatasetError(f"class list {wnids_path} names {dup} twice: {how}")
    index = {w: i for i, w in enumerate(wnids)}

    names = dict.fromkeys(wnids, "")
    words_path = folder / "words.txt"
    if words_path.is_file():  # names are cosmetic: a missing words.txt falls back to the wnids
        for line in _read_lines(words_path, "class names", how):
            wnid, _, name = line.partition("\t")
            if wnid in names:
                names[wnid] = name.strip()
    class_names = [names[w] or w for w in wnids]

    train_paths: list[str] = []
    train_labels: list[int] = []
    for w in wnids:
        d = folder / "train" / w / "images"
        if not d.is_dir():
            raise DatasetError(f"train folder of class {w} (listed in wnids.txt) not found at {d}: {how}")
        files = _images_in(d)
        if not files:
            raise DatasetError(f"train folder of class {w} has no images: {d}: {how}")
        train_paths += files
        train_labels += [index[w]] * len(files)

    val_dir = folder / "val" / "images"
    ann_path = folder / "val" / "val_annotations.txt"
    if not val_dir.is_dir():
        raise DatasetError(f"validation images folder not found at {val_dir}: {how}")
    if not ann_path.is_file():
        raise DatasetError(f"validation images in {val_dir} have no annotations: {ann_path} missing: {how}")
    present = {Path(p).name for p in _images_in(val_dir)}
    val_paths: list[str] = []
    val_labels: list[int] = []
    seen: set[str] = set()
    for k, line in enumerate(_read_lines(ann_path, "validation annotations", how), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise DatasetError(f"malformed line {k} of {ann_path}: expected '<file>\\t<wnid>\\t...', got "
                               f"{line[:80]!r}: {how}")
        fname, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DatasetError(f"line {k} of {ann_path} labels {fname} with wnid {wnid}, which is not in "
                               f"{wnids_path}: {how}")
        if fname in seen:
            raise DatasetError(f"line {k} of {ann_path} annotates {fname} a second time: {how}")
        if fname not in present:
            raise DatasetError(f"validation image {val_dir / fname} (line {k} of {ann_path}) not found: {how}")
        seen.add(fname)
        val_paths.append(str(val_dir / fname))
        val_labels.append(index[wnid])
    unlisted = sorted(present - seen)
    if unlisted:
        raise DatasetError(f"validation image {val_dir / unlisted[0]} has no annotation in {ann_path} "
                           f"({len(unlisted)} such): {how}")
    if not val_paths:
        raise DatasetError(f"validation annotations {ann_path} list no images: {how}")

    return DataBundle(name="tiny_imagenet", train=_fileset(train_paths, train_labels),
                      test=_fileset(val_paths, val_labels), num_classes=len(wnids), in_channels=3, image_size=64,
                      mean=TINY_MEAN, std=TINY_STD, class_names=class_names, kind="folder",
                      transforms=FolderTransforms(train_crop="pad", size=64))


def load_imagenet(root: str | Path, *, seed: int = 0, test_fraction: float = 0.25) -> DataBundle:
    """ILSVRC-2012 from <root>/imagenet/{train,val}/<wnid>/*.JPEG (val sorted into class folders, as
    torchvision's ImageFolder expects); classes = sorted train/ subfolders. seed/test_fraction do not apply."""
    how = (f"put the ILSVRC-2012 images ({IMAGENET_URL}) at <dataset.root>/{IMAGENET_DIR}/train/<wnid>/*.JPEG "
           f"and <dataset.root>/{IMAGENET_DIR}/val/<wnid>/*.JPEG (val sorted into class folders, e.g. with the "
           f"widely used valprep.sh), or set dataset.root=<the folder that contains {IMAGENET_DIR}/>")
    folder = _root_folder(root, IMAGENET_DIR, "ILSVRC2012_img_train.tar", how)
    train_dir, val_dir = folder / "train", folder / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise DatasetError(f"ImageNet folder {d.name}/ not found at {d}: {how}")
    wnids = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not wnids:
        raise DatasetError(f"ImageNet train folder {train_dir} has no class folders: {how}")
    index = {w: i for i, w in enumerate(wnids)}

    def split(d: Path, names: list[str]) -> FileSet:
        paths: list[str] = []
        labels: list[int] = []
        for w in names:
            files = _images_in(d / w)
            if not files:
                raise DatasetError(f"ImageNet class folder {d / w} has no images: {how}")
            paths += files
            labels += [index[w]] * len(files)
        return _fileset(paths, labels)

    val_wnids = sorted(e.name for e in os.scandir(val_dir) if e.is_dir())
    if not val_wnids:
        flat = " (it holds unsorted images: sort them into val/<wnid>/ folders)" if _images_in(val_dir) else ""
        raise DatasetError(f"ImageNet val folder {val_dir} has no class folders{flat}: {how}")
    unknown = [w for w in val_wnids if w not in index]
    if unknown:
        raise DatasetError(f"ImageNet val class folder {val_dir / unknown[0]} has no train counterpart in "
                           f"{train_dir}: {how}")
    return DataBundle(name="imagenet", train=split(train_dir, wnids), test=split(val_dir, val_wnids),
                      num_classes=len(wnids), in_channels=3, image_size=224, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, class_names=wnids, kind="folder",
                      transforms=FolderTransforms(train_crop="resized", size=224, eval_resize=256))


def _fileset(paths: list[str], labels: list[int]) -> FileSet:
    return FileSet(paths, torch.tensor(labels, dtype=torch.int64))


# ----------------------------------------------------------------------------- decoding + transforms
def _rrc_params(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params (scale 0.08-1, ratio 3/4-4/3), drawn from `rng`."""
    area = width * height
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height  # fallback: the central crop of the allowed aspect ratios
    if ratio < RRC_RATIO[0]:
        w, h = width, int(round(width / RRC_RATIO[0]))
    elif ratio > RRC_RATIO[1]:
        h, w = height, int(round(height * RRC_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _PackedPaths:
    """Paths as one utf-8 byte buffer + offsets: workers forked from the trainer read them without touching
    per-string refcounts, so a 1.28M-path list is not copied page by page into every worker."""

    def __init__(self, paths: Sequence[str]) -> None:
        encoded = [p.encode("utf-8") for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")


class FolderDataset(Dataset):
    """Indexed by (sample index, augmentation seed); returns (uint8 (3, size, size), label).

    Workers only decode, crop and flip uint8 pixels; float conversion and normalization happen on the
    device, which keeps workers cheap and the host->device copy 4x smaller.
    """

    def __init__(self, data: FileSet, transforms: FolderTransforms, *, train: bool, pad: int = 0,
                 flip: bool = False) -> None:
        if pad < 0:
            raise ValueError(f"FolderDataset: pad must be >= 0, got {pad}")
        self.paths = _PackedPaths(data.paths)
        self.labels = data.labels.numpy().copy()
        self.t = transforms
        self.train, self.pad, self.flip = bool(train), int(pad), bool(flip)

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, path: str) -> Image.Image:
        """The file as an RGB PIL image (grayscale, CMYK, palette -> RGB) or a one-line DatasetError."""
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DatasetError(f"cannot decode image {path}: {exc}; re-extract or remove the file") from None

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from torchvision.transforms.v2 import functional as TF  # lazy: seconds of import the CLI rarely needs

        i, seed = item
        img = self.decode(self.paths[i])
        rng = random.Random(seed) if self.train else None
        s = self.t.size
        if self.t.train_crop == "resized":
            if rng is not None:
                top, left, h, w = _rrc_params(img.width, img.height, rng)
                img = TF.resized_crop(img, top, left, h, w, [s, s], antialias=True)
            else:
                img = TF.center_crop(TF.resize(img, [self.t.eval_resize], antialias=True), [s, s])
            x = TF.pil_to_tensor(img)
        else:
            if img.size != (s, s):  # the official set is all 64x64; tolerate strays rather than fail a batch
                img = TF.resize(img, [s, s], antialias=True)
            x = TF.pil_to_tensor(img)
            if rng is not None and self.pad > 0:
                i0, j0 = rng.randint(0, 2 * self.pad), rng.randint(0, 2 * self.pad)
                x = torch.nn.functional.pad(x, (self.pad,) * 4)[:, i0:i0 + s, j0:j0 + s]
        if rng is not None and self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        return x.contiguous(), int(self.labels[i])


class _EpochBatches(Sampler):
    """Yields the current epoch's batches as lists of (index, augmentation seed) pairs; lives in the main
    process, so setting a new epoch reaches persistent workers through the index queue."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def set(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for idx, seeds in self.batches:
            yield list(zip(idx.tolist(), seeds.tolist()))


def _one_line(exc: DatasetError) -> DatasetError:
    """A DatasetError re-raised from a worker carries the worker's traceback; keep only its message."""
    lines = str(exc).strip().splitlines()
    if len(lines) <= 1:
        return exc
    return DatasetError(lines[-1].split("DatasetError: ", 1)[-1])


class FolderLoader(Batching):
    """BatchLoader's interface over a FileSet: yields `Batch` records (x float32 normalized, y int64, index)
    on `device`.

    Train: a fresh shuffle and fresh per-sample augmentation each epoch, a pure function of (seed, epoch).
    Test: file order, deterministic eval transform. `workers` decode in parallel (0 = in this process).
    `shard=(rank, world)` as in `Batching` (DDP).
    """

    def __init__(self, data: FileSet, *, batch_size: int, train: bool, mean: Sequence[float],
                 std: Sequence[float], transforms: FolderTransforms, pad: int = 0, flip: bool = False,
                 device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False,
                 channels_last: bool = False, workers: int = 4, shard: tuple[int, int] = (0, 1),
                 dtype: torch.dtype = torch.float32) -> None:
        self._init_batching(len(data), batch_size, train, drop_last, shard)
        if workers < 0:
            raise ValueError(f"FolderLoader: workers must be >= 0, got {workers}")
        self.device = torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = int(seed)
        self.channels_last = bool(channels_last)
        self.workers = int(workers)
        self.dtype = dtype
        self.dataset = FolderDataset(data, transforms, train=train, pad=pad, flip=flip)
        self.sampler = _EpochBatches()
        g = torch.Generator()
        g.manual_seed(self.seed)  # only DataLoader's worker base seed; our draws come from the sampler's seeds
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=self.workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                                 generator=g)

    def generator(self, epoch: int) -> torch.Generator:
        """The epoch's order and per-sample seeds; on the CPU, so CPU and CUDA runs see the same batches."""
        g = torch.Generator()
        g.manual_seed((self.seed * EPOCH_STRIDE + int(epoch)) % (1 << 63))
        return g

    def epoch(self, epoch: int) -> Iterator[Batch]:
        batches = []
        if self.train:
            g = self.generator(epoch)
            order = torch.randperm(self.num_samples, generator=g)
            seeds = torch.randint(0, 1 << 62, (self.num_samples,), generator=g)
            for b in range(len(self)):
                lo, hi = self.batch_bounds(b)
                part = self.my_part(hi - lo)
                batches.append((order[lo:hi][part], seeds[lo:hi][part]))
        else:
            first = self.local_range.start
            for b in range(len(self)):
                lo, hi = self.batch_bounds(b)
                batches.append((torch.arange(first + lo, first + hi), torch.zeros(hi - lo, dtype=torch.int64)))
        self.sampler.set(batches)
        try:
            for b, (x, y) in enumerate(self.loader):
                x = normalize(x.to(self.device, non_blocking=True), self.mean, self.std, self.dtype)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield Batch(x, y.to(self.device, non_blocking=True), batches[b][0].to(self.device),
                            batch_key(self.seed, epoch, b))
        except DatasetError as exc:
            raise _one_line(exc) from None
