"""`dataset.train_size` (a stratified, seeded subset of the training split) and the chimeric-phase fields:
the subset's size, proportions, order and determinism; their validation; and that neither option changes the
run_id of a run that does not set it."""

from __future__ import annotations

import pytest
import torch

from oracle_kd.cli import compose
from oracle_kd.data import DataBundle, FileSet, FolderTransforms, ImageSet, load_dataset, train_subset
from oracle_kd.data.subset import class_quotas
from oracle_kd.engine.teacher import identify
from oracle_kd.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits", "data")


def _bundle(train: ImageSet | FileSet, test: ImageSet | FileSet, num_classes: int, **kw) -> DataBundle:
    return DataBundle(name="toy", train=train, test=test, num_classes=num_classes, in_channels=1, image_size=2,
                      mean=(0.5,), std=(0.5,), class_names=[str(i) for i in range(num_classes)], **kw)


def _toy_images(labels: list[int], coarse: list[int] | None = None) -> ImageSet:
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()  # pixel value = index
    return ImageSet(images, torch.tensor(labels), None if coarse is None else torch.tensor(coarse))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- the subset

@pytest.mark.parametrize("size", [10, 50, 100, 333, 1000])
def test_digits_subset_has_the_size_and_the_class_proportions(digits: DataBundle, size: int) -> None:
    sub = train_subset(digits, size, seed=0)
    assert len(sub.train) == size
    full = torch.bincount(digits.train.labels, minlength=10).double()
    got = torch.bincount(sub.train.labels, minlength=10).double()
    assert (got >= 1).all()
    assert (got - full * size / len(digits.train)).abs().max() < 1.0 + 1e-9  # largest remainder: within one
    assert sub.test is digits.test and sub.num_classes == digits.num_classes


def test_kept_samples_are_real_samples_in_their_original_order(digits: DataBundle) -> None:
    sub = train_subset(digits, 200, seed=3)
    flat = digits.train.images.flatten(1)
    idx = [int(torch.nonzero((flat == row).all(1))[0]) for row in sub.train.images.flatten(1)]
    assert all(a < b for a, b in zip(idx, idx[1:]))  # (digits' 1347 training images are all distinct)
    assert torch.equal(digits.train.labels[idx], sub.train.labels)


def test_order_is_kept_exactly_on_distinct_samples() -> None:
    labels = [i % 3 for i in range(60)]
    sub = train_subset(_bundle(_toy_images(labels), _toy_images([0, 1, 2]), 3), 12, seed=5)
    idx = sub.train.images[:, 0, 0, 0].long()
    assert torch.equal(idx, torch.sort(idx).values) and len(set(idx.tolist())) == 12
    assert torch.equal(sub.train.labels, torch.tensor(labels)[idx])


def test_the_subset_is_deterministic_and_depends_on_the_seed(digits: DataBundle) -> None:
    a, b, c = (train_subset(digits, 100, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.equal(torch.bincount(a.train.labels), torch.bincount(c.train.labels))  # same quotas either way


def test_every_class_gets_one_even_when_its_share_rounds_to_zero() -> None:
    labels = [0] * 90 + [1] * 5 + [2] * 5
    sub = train_subset(_bundle(_toy_images(labels), _toy_images([0, 1, 2]), 3), 4, seed=0)
    assert torch.bincount(sub.train.labels, minlength=3).tolist() == [2, 1, 1]


def test_class_quotas_sum_exactly_and_fit_their_classes() -> None:
    assert class_quotas([50, 30, 20], 10) == [5, 3, 2]
    assert class_quotas([1, 1, 1], 2 + 1) == [1, 1, 1]
    assert class_quotas([34, 33, 33], 10) == [4, 3, 3]  # remainders .4, .3, .3: the largest gets the extra one
    assert class_quotas([97, 1, 1, 1], 4) == [1, 1, 1, 1]
    for counts in ([7, 1, 300, 2, 40], [3, 3, 3, 3], [1000, 1, 1]):
        for size in range(len(counts), sum(counts)):
            q = class_quotas(counts, size)
            assert sum(q) == size and all(1 <= x <= c for x, c in zip(q, counts)), (counts, size, q)


def test_coarse_labels_stay_aligned() -> None:
    labels = [i % 4 for i in range(40)]
    coarse = [label // 2 for label in labels]
    bundle = _bundle(_toy_images(labels, coarse), _toy_images([0, 1, 2, 3], [0, 0, 1, 1]), 4, num_coarse_classes=2)
    sub = train_subset(bundle, 9, seed=1)
    idx = sub.train.images[:, 0, 0, 0].long()
    assert torch.equal(sub.train.labels, torch.tensor(labels)[idx])
    assert torch.equal(sub.train.coarse_labels, torch.tensor(coarse)[idx])
    assert torch.equal(sub.train.coarse_labels, sub.train.labels // 2)


def test_a_file_set_is_cut_the_same_way() -> None:
    labels = [i % 5 for i in range(50)]
    paths = [f"/data/img{i:03d}.png" for i in range(50)]
    test = FileSet(["/data/t.png"], torch.tensor([0]))
    bundle = _bundle(FileSet(paths, torch.tensor(labels)), test, 5, kind="folder",
                     transforms=FolderTransforms("pad", 2))
    sub = train_subset(bundle, 15, seed=2)
    assert isinstance(sub.train, FileSet) and len(sub.train) == 15 and sub.test is test
    idx = [paths.index(p) for p in sub.train.paths]
    assert idx == sorted(idx) and sub.train.labels.tolist() == [labels[i] for i in idx]
    assert torch.bincount(sub.train.labels).tolist() == [3] * 5
    images = _bundle(_toy_images(labels), _toy_images([0]), 5)
    assert train_subset(images, 15, seed=2).train.images[:, 0, 0, 0].tolist() == idx  # the same draw for both kinds


@pytest.mark.parametrize("size", [0, 1347, 5000])
def test_zero_or_the_whole_split_leaves_the_bundle_unchanged(digits: DataBundle, size: int) -> None:
    assert len(digits.train) == 1347
    assert train_subset(digits, size, seed=0) is digits


def test_fewer_samples_than_classes_is_one_line(digits: DataBundle) -> None:
    with pytest.raises(ConfigError, match=r"dataset.train_size=5: fewer samples than the 10 classes") as exc:
        train_subset(digits, 5, seed=0)
    _one_line(exc)


# ---------------------------------------------------------------- validation and identity

@pytest.mark.parametrize("overrides,key", [
    (["dataset.train_size=-1"], "dataset.train_size=-1"),
    (["train.chimeric_epochs=-1"], "train.chimeric_epochs=-1"),
    (["train.chimeric_size=-3"], "train.chimeric_size=-3"),
    (["train.chimeric_epochs=2"], "train.chimeric_size=0"),
])
def test_bad_values_are_refused_in_one_line(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key) as exc:
        compose(["method=kd", *overrides])
    _one_line(exc)


def test_defaults_leave_the_semantic_config_as_it_was() -> None:
    sem = identify(compose(["method=kd"]))[0]
    assert "train_size" not in sem["dataset"]
    assert not {"chimeric_epochs", "chimeric_size"} & set(sem["train"])
    rc = compose(["method=kd", "train.chimeric_size=100"])  # no chimeric epochs: the size changes nothing
    assert identify(rc)[1] == identify(compose(["method=kd"]))[1]


def test_setting_the_new_options_changes_the_run_id() -> None:
    base = identify(compose(["method=kd"]))[1]
    sem, sized, _ = identify(compose(["method=kd", "dataset.train_size=100"]))
    assert sem["dataset"]["train_size"] == 100 and sized != base
    assert identify(compose(["method=kd", "dataset.train_size=200"]))[1] not in (base, sized)
    sem, chim, _ = identify(compose(["method=kd", "train.chimeric_epochs=5", "train.chimeric_size=500"]))
    assert sem["train"]["chimeric_epochs"] == 5 and sem["train"]["chimeric_size"] == 500
    assert chim not in (base, sized)
    assert identify(compose(["method=kd", "train.chimeric_epochs=5", "train.chimeric_size=600"]))[1] != chim
