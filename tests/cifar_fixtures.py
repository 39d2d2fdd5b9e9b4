"""Write tiny CIFAR-10/100 datasets byte-for-byte in the authors' format: dicts pickled by Python 2.

Python 3's `pickle.dump` cannot produce these files (with numpy 2 it names `numpy._core...` and stores bytes
via `_codecs.encode`), so `py2_dumps` assembles the protocol-2 opcode stream the way Python 2's cPickle did:
py2 `str` as SHORT_BINSTRING/BINSTRING, globals as `GLOBAL numpy.core.multiarray _reconstruct`, and the
array as `_reconstruct(ndarray, (0,), 'b')` + BUILD `(1, shape, dtype('u1'), False, <raw bytes>)`.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["py2_dumps", "write_cifar10", "write_cifar100", "write_modern_cifar100"]

_BATCHSIZE = 1000  # cPickle emits SETITEMS/APPENDS in groups of this size


class _Py2Writer:
    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo = 0
        self.globals: dict[tuple[str, str], int] = {}

    def put(self) -> None:
        self.out += b"q" + bytes([self.memo]) if self.memo < 256 else b"r" + struct.pack("<I", self.memo)
        self.memo += 1

    def glob(self, module: str, name: str) -> None:
        key = (module, name)
        if key in self.globals:  # cPickle memoizes globals and BINGETs them on reuse
            i = self.globals[key]
            self.out += b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)
            return
        self.out += b"c" + f"{module}\n{name}\n".encode("ascii")
        self.globals[key] = self.memo
        self.put()

    def string(self, raw: bytes) -> None:
        """A py2 `str` (a byte string): SHORT_BINSTRING below 256 bytes, else BINSTRING."""
        if len(raw) < 256:
            self.out += b"U" + bytes([len(raw)]) + raw
        else:
            self.out += b"T" + struct.pack("<i", len(raw)) + raw
        self.put()

    def integer(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        else:
            self.out += b"J" + struct.pack("<i", v)

    def tuple_(self, items: tuple) -> None:
        if 1 <= len(items) <= 3:
            for it in items:
                self.save(it)
            self.out += b"\x85\x86\x87"[len(items) - 1:len(items)]
        else:
            self.out += b"("
            for it in items:
                self.save(it)
            self.out += b"t"
        self.put()

    def ndarray(self, a: np.ndarray) -> None:
        if a.dtype != np.uint8:
            raise TypeError("fixture writer handles uint8 arrays only")
        self.glob("numpy.core.multiarray", "_reconstruct")
        self.glob("numpy", "ndarray")
        self.out += b"K\x00\x85"  # the (0,) shape argument
        self.put()
        self.string(b"b")
        self.out += b"\x87"
        self.put()
        self.out += b"R"
        self.put()
        self.out += b"(K\x01"  # state: (version 1, shape, dtype, fortran, rawdata)
        self.tuple_(tuple(int(s) for s in a.shape))
        self.glob("numpy", "dtype")
        self.string(b"u1")
        self.out += b"K\x00K\x01\x87"
        self.put()
        self.out += b"R"
        self.put()
        self.out += b"(K\x03"  # dtype state: (3, '|', None, None, None, -1, -1, 0)
        self.string(b"|")
        self.out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
        self.put()
        self.out += b"b\x89"  # BUILD dtype; is_fortran = False
        self.string(np.ascontiguousarray(a).tobytes())
        self.out += b"t"
        self.put()
        self.out += b"b"  # BUILD the array

    def save(self, obj: Any) -> None:
        if obj is None:
            self.out += b"N"
        elif isinstance(obj, bool):
            self.out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            self.integer(obj)
        elif isinstance(obj, str):
            self.string(obj.encode("ascii"))  # py2 str literals: the CIFAR files hold ASCII only
        elif isinstance(obj, bytes):
            self.string(obj)
        elif isinstance(obj, tuple):
            self.tuple_(obj)
        elif isinstance(obj, list):
            self.out += b"]"
            self.put()
            for i in range(0, len(obj), _BATCHSIZE):
                self.out += b"("
                for it in obj[i:i + _BATCHSIZE]:
                    self.save(it)
                self.out += b"e"
        elif isinstance(obj, dict):
            self.out += b"}"
            self.put()
            items = list(obj.items())
            for i in range(0, len(items), _BATCHSIZE):
                self.out += b"("
                for k, v in items[i:i + _BATCHSIZE]:
                    self.save(k)
                    self.save(v)
                self.out += b"u"
        elif isinstance(obj, np.ndarray):
            self.ndarray(obj)
        else:
            raise TypeError(f"py2_dumps: unsupported {type(obj).__name__}")


def py2_dumps(obj: Any) -> bytes:
    """Serialize dicts/lists/tuples/ASCII str/int/bool/None/uint8 arrays as Python 2 cPickle protocol 2 did."""
    w = _Py2Writer()
    w.save(obj)
    return bytes(w.out + b".")


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def write_cifar100(root: str | Path, n_train: int = 40, n_test: int = 16, seed: int = 0) -> dict[str, Any]:
    """Write <root>/cifar-100-python/{train,test,meta}; returns the arrays and names written.

    Coarse label = fine // 5, so fine and coarse labels are consistent (the real mapping differs; irrelevant).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {
        "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
    }
    (folder / "meta").write_bytes(py2_dumps({"fine_label_names": written["fine_label_names"],
                                             "coarse_label_names": written["coarse_label_names"]}))
    for split, n in (("train", n_train), ("test", n_test)):
        data, fine = _images(rng, n), rng.integers(0, 100, size=n).astype(np.int64)
        coarse = fine // 5
        (folder / split).write_bytes(py2_dumps({
            "filenames": [f"img_{split}_{i}.png" for i in range(n)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": [int(v) for v in fine],
            "coarse_labels": [int(v) for v in coarse],
            "data": data,
        }))
        written.update({f"{split}_data": data, f"{split}_fine": fine, f"{split}_coarse": coarse})
    return written


def write_cifar10(root: str | Path, n_train: int = 50, n_test: int = 16, seed: int = 0) -> dict[str, Any]:
    """Write <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}; n_train is split over the
    five batches in order. Returns the (concatenated) arrays and names written."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(py2_dumps({"num_cases_per_batch": max(1, n_train // 5),
                                                     "label_names": names, "num_vis": 3072}))
    train_data, train_labels = _images(rng, n_train), rng.integers(0, 10, size=n_train).astype(np.int64)
    bounds = np.linspace(0, n_train, 6).astype(int)
    for i in range(5):
        lo, hi = bounds[i], bounds[i + 1]
        (folder / f"data_batch_{i + 1}").write_bytes(py2_dumps({
            "data": train_data[lo:hi], "labels": [int(v) for v in train_labels[lo:hi]],
            "batch_label": f"training batch {i + 1} of 5",
            "filenames": [f"train_{j}.png" for j in range(lo, hi)]}))
    test_data, test_labels = _images(rng, n_test), rng.integers(0, 10, size=n_test).astype(np.int64)
    (folder / "test_batch").write_bytes(py2_dumps({
        "data": test_data, "labels": [int(v) for v in test_labels], "batch_label": "testing batch 1 of 1",
        "filenames": [f"test_{j}.png" for j in range(n_test)]}))
    return {"label_names": names, "train_data": train_data, "train_labels": train_labels,
            "test_data": test_data, "test_labels": test_labels}


def write_modern_cifar100(root: str | Path, n_train: int = 12, n_test: int = 8, seed: int = 1,
                          protocol: int = pickle.DEFAULT_PROTOCOL) -> dict[str, Any]:
    """The same layout written by Python 3's own `pickle.dump` (numpy 2 names, bytes for protocol >= 3,
    `_codecs.encode` for protocol 2, `_frombuffer` for protocol 5) - e.g. a dataset someone re-saved."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"fine_label_names": [f"f{i}" for i in range(100)],
                               "coarse_label_names": [f"c{i}" for i in range(20)]}
    with open(folder / "meta", "wb") as f:
        pickle.dump(dict(written), f, protocol=protocol)
    for split, n in (("train", n_train), ("test", n_test)):
        data, fine = _images(rng, n), rng.integers(0, 100, size=n).astype(np.int64)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()},
                        f, protocol=protocol)
        written.update({f"{split}_data": data, f"{split}_fine": fine, f"{split}_coarse": fine // 5})
    return written
