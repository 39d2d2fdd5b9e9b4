"""Data layer: digits split, CIFAR real-format loading through the restricted unpickler, batched
augmentation, and the deterministic BatchLoader."""

from __future__ import annotations

import io
import os
import pickle
import pickletools

import numpy as np
import pytest
import torch

from helpers.cifar_fixtures import py2_dumps, write_cifar10, write_cifar100, write_modern_cifar100
from oracle_kd.data import BatchLoader, DataBundle, ImageSet, augment_batch, available_datasets, load_dataset, normalize
from oracle_kd.data.cifar import CIFAR10_MEAN, CIFAR100_MEAN, CIFAR100_STD, safe_load
from oracle_kd.errors import ConfigError, DatasetError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(device: str = "cpu", seed: int = 0) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- registry / digits

def test_registry_lists_and_rejects_unknown(tmp_path):
    assert available_datasets() == ["cifar10", "cifar100", "digits", "imagenet", "tiny_imagenet"]
    with pytest.raises(ConfigError, match="mnist"):
        load_dataset("mnist", tmp_path)


def test_digits_shapes_split_and_stats():
    b = load_dataset("digits", "ignored")
    assert isinstance(b, DataBundle) and b.name == "digits"
    assert (b.num_classes, b.in_channels, b.image_size) == (10, 1, 8)
    assert b.class_names == [str(i) for i in range(10)] and b.num_coarse_classes is None
    assert (len(b.train), len(b.test)) == (1347, 450)
    for s in (b.train, b.test):
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (1, 8, 8) and s.images.is_contiguous()
        assert s.labels.dtype == torch.int64 and s.coarse_labels is None
    assert int(b.train.images.max()) == 255 and int(b.train.images.min()) == 0
    assert set(torch.unique(b.test.labels).tolist()) == set(range(10))
    counts = torch.bincount(b.test.labels, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47  # stratified: ~45 per class
    x = b.train.images.double() / 255
    assert b.mean == pytest.approx((x.mean().item(),)) and b.std == pytest.approx((x.std(unbiased=False).item(),))


def test_digits_pixel_scaling():
    from sklearn.datasets import load_digits

    raw = load_digits()
    b = load_dataset("digits", ".")
    all_images = torch.cat([b.train.images, b.test.images]).flatten(1).numpy()
    expected = np.rint(raw.images.reshape(len(raw.images), -1) * 255 / 16).astype(np.uint8)
    assert sorted(map(bytes, all_images)) == sorted(map(bytes, expected))


def test_digits_split_fixed_across_run_seeds():
    a, b = load_dataset("digits", ".", seed=0), load_dataset("digits", ".", seed=7)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert torch.equal(a.train.images, b.train.images) and a.mean == b.mean
    assert len(load_dataset("digits", ".", test_fraction=0.5).test) == 899
    with pytest.raises(ConfigError):
        load_dataset("digits", ".", test_fraction=1.0)


def test_imageset_validates():
    with pytest.raises(DatasetError):
        ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DatasetError):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# ---------------------------------------------------------------- CIFAR, real Python-2 format

def test_fixture_is_python2_format(tmp_path):
    write_cifar100(tmp_path, n_train=300, n_test=2)
    raw = (tmp_path / "cifar-100-python" / "train").read_bytes()
    out = io.StringIO()
    pickletools.dis(raw, out=out)
    listing = out.getvalue()
    assert "GLOBAL     'numpy.core.multiarray _reconstruct'" in listing
    assert "'numpy ndarray'" in listing and "'numpy dtype'" in listing
    assert "_codecs" not in listing and "_core" not in listing
    assert "BINUNICODE" not in listing and "STACK_GLOBAL" not in listing
    assert "SHORT_BINSTRING 'fine_labels'" in listing and "BINSTRING" in listing
    assert raw[:2] == b"\x80\x02"


@pytest.mark.filterwarnings("error")  # e.g. no numpy.core DeprecationWarning under numpy 2
def test_cifar100_loads_pixel_exact(tmp_path):
    w = write_cifar100(tmp_path, n_train=40, n_test=16, seed=3)
    b = load_dataset("cifar100", tmp_path)
    assert (b.name, b.num_classes, b.in_channels, b.image_size) == ("cifar100", 100, 3, 32)
    assert b.mean == CIFAR100_MEAN and b.std == CIFAR100_STD
    assert b.class_names == w["fine_label_names"] and b.coarse_class_names == w["coarse_label_names"]
    assert b.num_coarse_classes == 20
    for split, s in (("train", b.train), ("test", b.test)):
        data = w[f"{split}_data"]
        assert s.images.shape == (len(data), 3, 32, 32) and s.images.dtype == torch.uint8
        assert s.images.is_contiguous()
        assert np.array_equal(s.images.numpy().reshape(len(data), -1), data)
        # channel order R, G, B: the first 1024 bytes of a row are the red plane, row-major
        assert np.array_equal(s.images[5, 0].numpy().ravel(), data[5, :1024])
        assert np.array_equal(s.images[5, 2].numpy().ravel(), data[5, 2048:])
        assert int(s.images[5, 1, 2, 3]) == data[5, 1024 + 2 * 32 + 3]
        assert torch.equal(s.labels, torch.from_numpy(w[f"{split}_fine"]))
        assert torch.equal(s.coarse_labels, torch.from_numpy(w[f"{split}_coarse"]))
        assert s.labels.dtype == torch.int64 and s.coarse_labels.dtype == torch.int64
    s = b.train.images[0]
    s.fill_(0)  # the tensors own writable memory (not a view of a read-only pickle buffer)


@pytest.mark.filterwarnings("error")
def test_cifar10_loads_pixel_exact(tmp_path):
    w = write_cifar10(tmp_path, n_train=53, n_test=9, seed=4)
    b = load_dataset("cifar10", tmp_path)
    assert (b.num_classes, b.mean, b.class_names[0], b.class_names[-1]) == (10, CIFAR10_MEAN, "airplane", "truck")
    assert b.train.coarse_labels is None and b.num_coarse_classes is None
    assert np.array_equal(b.train.images.numpy().reshape(53, -1), w["train_data"])  # batches 1..5 in order
    assert np.array_equal(b.test.images.numpy().reshape(9, -1), w["test_data"])
    assert torch.equal(b.train.labels, torch.from_numpy(w["train_labels"]))
    assert torch.equal(b.test.labels, torch.from_numpy(w["test_labels"]))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_modern_python3_pickles_load(tmp_path, protocol):
    w = write_modern_cifar100(tmp_path, protocol=protocol)
    b = load_dataset("cifar100", tmp_path)
    assert np.array_equal(b.test.images.numpy().reshape(len(b.test), -1), w["test_data"])
    assert torch.equal(b.train.coarse_labels, torch.from_numpy(w["train_coarse"]))


def test_bytes_keys_accepted(tmp_path):
    arr = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072)
    p = tmp_path / "f"
    p.write_bytes(pickle.dumps({b"data": arr, b"labels": [1, 2]}))
    from oracle_kd.data.cifar import _keys_to_str

    d = _keys_to_str(safe_load(p), p)
    assert np.array_equal(d["data"], arr) and d["labels"] == [1, 2]


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("kind", ["os.system", "eval"])
def test_malicious_pickle_refused(tmp_path, kind):
    write_cifar100(tmp_path, n_train=4, n_test=4)
    marker = tmp_path / "PWNED"
    payload = (_Evil(os.system, f"touch {marker}") if kind == "os.system"
               else _Evil(eval, f"open({str(marker)!r}, 'w').close()"))
    target = tmp_path / "cifar-100-python" / "train"
    target.write_bytes(pickle.dumps({"data": payload, "fine_labels": [], "coarse_labels": []}, protocol=2))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar100", tmp_path)
    msg = _one_line(exc)
    assert ("system" if kind == "os.system" else "eval") in msg and str(target) in msg
    assert "refused" in msg
    assert not marker.exists()


def test_non_latin1_codecs_refused(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DatasetError, match="rot13"):
        safe_load(p)


def test_missing_folder_one_line(tmp_path):
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar100", tmp_path / "nowhere")
    msg = _one_line(exc)
    assert str((tmp_path / "nowhere").resolve()) in msg and "cifar-100-python" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "dataset.root" in msg
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", tmp_path)
    assert "cifar-10-batches-py" in _one_line(exc)


def test_missing_file_and_malformed_one_line(tmp_path):
    write_cifar100(tmp_path, n_train=4, n_test=4)
    folder = tmp_path / "cifar-100-python"
    (folder / "test").unlink()
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar100", tmp_path)
    assert "test" in _one_line(exc) and str(folder) in str(exc.value)

    (folder / "test").write_bytes(py2_dumps({"data": np.zeros((2, 100), np.uint8), "fine_labels": [0, 1],
                                             "coarse_labels": [0, 1]}))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar100", tmp_path)
    assert "'data'" in _one_line(exc)

    (folder / "test").write_bytes(py2_dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar100", tmp_path)
    assert "coarse_labels" in _one_line(exc)

    (folder / "test").write_bytes((folder / "train").read_bytes()[:500])  # truncated
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar100", tmp_path)
    assert "malformed" in _one_line(exc)


# ---------------------------------------------------------------- augmentation

def _reference_crops(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every (offset, flip) output of one image, computed the slow obvious way."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out += [crop, crop.flip(-1)]
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_augment_matches_reference_and_is_reproducible(device):
    img = torch.randint(0, 256, (3, 6, 7), generator=_gen(), dtype=torch.uint8)
    x = img.expand(64, -1, -1, -1).contiguous().to(device)
    out = augment_batch(x, pad=2, flip=True, generator=_gen(device, 5))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device and out.is_contiguous()
    refs = _reference_crops(img, 2)
    for o in out.cpu():
        assert any(torch.equal(o, r) for r in refs)
    assert len({bytes(o.numpy()) for o in out.cpu()}) > 20  # independent per-image offsets
    assert torch.equal(out, augment_batch(x, pad=2, flip=True, generator=_gen(device, 5)))
    assert not torch.equal(out, augment_batch(x, pad=2, flip=True, generator=_gen(device, 6)))


def test_flip_about_half():
    img = torch.arange(16, dtype=torch.uint8).view(1, 4, 4)
    x = img.expand(1000, -1, -1, -1).contiguous()
    out = augment_batch(x, pad=0, flip=True, generator=_gen())
    flipped = (out == img.flip(-1)).flatten(1).all(1)
    same = (out == img).flatten(1).all(1)
    assert bool((flipped ^ same).all())
    assert 400 < int(flipped.sum()) < 600


def test_padding_is_zeros():
    x = torch.full((500, 1, 8, 8), 255, dtype=torch.uint8)
    out = augment_batch(x, pad=3, flip=False, generator=_gen())
    zeros = (out == 0).flatten(1).sum(1)
    assert int(zeros.max()) > 0 and int(zeros.min()) == 0  # some crops reach into the border, (3,3) does not
    assert set(torch.unique(out).tolist()) == {0, 255}
    # every crop is a shifted all-255 block: zeros fill whole rows/columns at the edges
    for o in out[:50, 0]:
        rows = (o == 255).any(1)
        cols = (o == 255).any(0)
        assert torch.equal(o == 255, rows[:, None] & cols[None, :])


def test_identity_without_augmentation():
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(augment_batch(x, pad=0, flip=False, generator=_gen()), x)


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    got = normalize(x, mean, std)
    m, s = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1), torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), (x.double() / 255 - m) / s, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        normalize(x, (0.5,), (0.5,))


# ---------------------------------------------------------------- BatchLoader

def _toy_set(n: int = 103) -> ImageSet:
    g = _gen(seed=1)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n))


MS = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _collect(loader: BatchLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch)]


@pytest.mark.parametrize("device", DEVICES)
def test_loader_deterministic_per_epoch(device):
    data = _toy_set()
    mk = lambda: BatchLoader(data, batch_size=10, train=True, pad=2, flip=True, seed=3, device=device, **MS)
    a = mk()
    _collect(a, 0), _collect(a, 1)
    e2 = _collect(a, 2)
    e2_resumed = _collect(mk(), 2)  # a fresh loader, as after a resume
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(e2, e2_resumed))
    e3 = _collect(a, 3)
    assert not torch.equal(torch.cat([y for _, y in e2]), torch.cat([y for _, y in e3]))
    other_seed = BatchLoader(data, batch_size=10, train=True, pad=2, flip=True, seed=4, device=device, **MS)
    assert not torch.equal(torch.cat([y for _, y in e2]), torch.cat([y for _, y in _collect(other_seed, 2)]))
    x, y = e2[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.device.type == device == y.device.type


def test_loader_covers_every_sample_and_last_batch():
    data = _toy_set(103)
    loader = BatchLoader(data, batch_size=10, train=True, seed=0, **MS)
    assert len(loader) == 11 and loader.num_samples == 103
    batches = _collect(loader, 0)
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    ys = torch.cat([y for _, y in batches])
    assert torch.equal(ys.sort().values, torch.arange(103)) and not torch.equal(ys, torch.arange(103))
    for x, y in batches:  # pixels travel with their labels
        torch.testing.assert_close(x, normalize(data.images[y], **MS))
    dropped = BatchLoader(data, batch_size=10, train=True, drop_last=True, **MS)
    assert len(dropped) == 10 and [len(y) for _, y in dropped.epoch(0)] == [10] * 10


def test_train_loader_augments():
    data = _toy_set(64)
    x, y = next(BatchLoader(data, batch_size=64, train=True, pad=2, flip=True, **MS).epoch(0))
    assert not torch.allclose(x, normalize(data.images[y], **MS))


def test_test_loader_in_order_without_augmentation():
    data = _toy_set(25)
    loader = BatchLoader(data, batch_size=8, train=False, pad=4, flip=True, channels_last=True, **MS)
    batches = _collect(loader, 0)
    assert [len(y) for _, y in batches] == [8, 8, 8, 1]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(25))
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), normalize(data.images, **MS))
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, _collect(loader, 5)))
