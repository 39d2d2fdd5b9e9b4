"""CIFAR-10 / CIFAR-100 read from the authors' python pickles, through an unpickler that runs nothing.

The files are dicts pickled by Python 2 (protocol 2). A plain `pickle.load` would import and call whatever
globals a file names, so a swapped-in file could run arbitrary code; `SafeUnpickler` admits only the few
numpy constructors an array needs and refuses everything else before it is imported.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from oracle_kd.data.types import DataBundle, ImageSet
from oracle_kd.errors import DatasetError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
PIXELS = 3 * 32 * 32


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's `_reconstruct`, but only for plain ndarrays (a subclass could carry its own code)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"_reconstruct of {subtype!r} refused (only numpy.ndarray)")
    return _NP_RECONSTRUCT(subtype, shape, dtype)


def _codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """What Python 3 writes for `bytes` in protocol < 3 is `_codecs.encode(str, 'latin1')`; admit only that."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode(..., {encoding!r}) refused (only latin1 text)")
    return text.encode("latin1", errors)


# Resolved from numpy objects themselves, so the same table works under numpy 1 (numpy.core) and 2 (numpy._core)
# without importing the deprecated `numpy.core` shim.
_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NP_SCALAR = np.float64(0).__reduce__()[0]
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {("_codecs", "encode"): _codecs_encode}
for _pkg in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_pkg}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_pkg}.multiarray", "scalar")] = _NP_SCALAR
    _ALLOWED[(f"{_pkg}.numeric", "_frombuffer")] = _NP_FROMBUFFER  # protocol-5 pickles of arrays
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype


class SafeUnpickler(pickle.Unpickler):
    """Resolves only numpy's array/dtype constructors; any other global is refused with a DatasetError."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # py2 `str` -> str; numpy accepts latin1 str as raw data
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(f"refused to unpickle global {module}.{name} in {self.path}: CIFAR files only "
                               "contain numpy arrays; the file is corrupt or not the authors' original") from None


def safe_load(path: Path) -> Any:
    """Unpickle `path` with SafeUnpickler; a truncated or garbled file becomes a one-line DatasetError."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, path).load()
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError from numpy's __setstate__, ...
        msg = " ".join(str(exc).split())
        raise DatasetError(f"malformed pickle {path}: {type(exc).__name__}: {msg}") from None


def _keys_to_str(obj: Any, path: Path) -> dict[str, Any]:
    """Accept both `encoding='latin1'` str keys and bytes keys (a dict re-pickled after `encoding='bytes'`)."""
    if not isinstance(obj, dict):
        raise DatasetError(f"malformed CIFAR file {path}: expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _require_key(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        raise DatasetError(f"malformed CIFAR file {path}: key {key!r} missing (has: {', '.join(map(str, d))})")
    return d[key]


def _names(d: dict[str, Any], key: str, count: int, path: Path) -> list[str]:
    names = _require_key(d, key, path)
    if not isinstance(names, (list, tuple)) or len(names) != count:
        raise DatasetError(f"malformed CIFAR file {path}: {key!r} should list {count} names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _labels(d: dict[str, Any], key: str, n: int, num_classes: int, path: Path) -> np.ndarray:
    try:
        y = np.array(_require_key(d, key, path), dtype=np.int64).reshape(-1)  # a copy: writable
    except (TypeError, ValueError):
        raise DatasetError(f"malformed CIFAR file {path}: {key!r} is not a list of integers") from None
    if y.shape != (n,) or (n and (y.min() < 0 or y.max() >= num_classes)):
        raise DatasetError(f"malformed CIFAR file {path}: {key!r} should be {n} labels in [0, {num_classes})")
    return y


def _pixels(d: dict[str, Any], path: Path) -> np.ndarray:
    data = _require_key(d, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"malformed CIFAR file {path}: 'data' should be uint8 (N, {PIXELS}), got {desc}")
    return data


def _to_images(chunks: list[np.ndarray]) -> torch.Tensor:
    """Rows are 1024 R, 1024 G, 1024 B of a row-major 32x32 image, so a reshape gives (N, 3, 32, 32)."""
    data = np.concatenate(chunks) if len(chunks) > 1 else np.array(chunks[0], copy=True)  # writable, owned
    return torch.from_numpy(data.reshape(-1, 3, 32, 32))


def _folder(root: str | Path, sub: str, archive: str, files: list[str]) -> Path:
    """The extracted folder, or a one-line DatasetError saying what is missing, where, and how to get it."""
    root = Path(root).expanduser().resolve()
    folder = root / sub
    how = (f"dataset.download=true fetches it (or download and extract {archive} from the dataset authors' page "
           f"({CIFAR_URL}) into {root} yourself), or set dataset.root=<the folder that contains {sub}/>")
    if not folder.is_dir():
        hint = f" ({archive} is there but not extracted)" if (root / archive).is_file() else ""
        raise DatasetError(f"CIFAR folder {sub}/ not found at {folder}{hint}: {how}")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"CIFAR file(s) {', '.join(missing)} missing in {folder}: {how}")
    return folder


def load_cifar10(root: str | Path, *, seed: int = 0, test_fraction: float = 0.25) -> DataBundle:
    """The official 50k/10k split from cifar-10-batches-py/ (seed and test_fraction do not apply)."""
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    folder = _folder(root, "cifar-10-batches-py", "cifar-10-python.tar.gz", train_files + ["test_batch", "batches.meta"])
    meta_path = folder / "batches.meta"
    names = _names(_keys_to_str(safe_load(meta_path), meta_path), "label_names", 10, meta_path)

    def split(files: list[str]) -> ImageSet:
        chunks, labels = [], []
        for fname in files:
            path = folder / fname
            d = _keys_to_str(safe_load(path), path)
            chunks.append(_pixels(d, path))
            labels.append(_labels(d, "labels", len(chunks[-1]), 10, path))
        return ImageSet(_to_images(chunks), torch.from_numpy(np.concatenate(labels)))

    return DataBundle(name="cifar10", train=split(train_files), test=split(["test_batch"]), num_classes=10,
                      in_channels=3, image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, class_names=names)


def load_cifar100(root: str | Path, *, seed: int = 0, test_fraction: float = 0.25) -> DataBundle:
    """The official 50k/10k split from cifar-100-python/, with the 20 super-class labels kept alongside."""
    folder = _folder(root, "cifar-100-python", "cifar-100-python.tar.gz", ["train", "test", "meta"])
    meta_path = folder / "meta"
    meta = _keys_to_str(safe_load(meta_path), meta_path)
    fine_names = _names(meta, "fine_label_names", 100, meta_path)
    coarse_names = _names(meta, "coarse_label_names", 20, meta_path)

    def split(fname: str) -> ImageSet:
        path = folder / fname
        d = _keys_to_str(safe_load(path), path)
        data = _pixels(d, path)
        fine = _labels(d, "fine_labels", len(data), 100, path)
        coarse = _labels(d, "coarse_labels", len(data), 20, path)
        return ImageSet(_to_images([data]), torch.from_numpy(fine), torch.from_numpy(coarse))

    return DataBundle(name="cifar100", train=split("train"), test=split("test"), num_classes=100, in_channels=3,
                      image_size=32, mean=CIFAR100_MEAN, std=CIFAR100_STD, class_names=fine_names,
                      num_coarse_classes=20, coarse_class_names=coarse_names)
