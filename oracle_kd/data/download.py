"""`dataset.download=true`: fetch, verify and extract CIFAR-10, CIFAR-100 and Tiny-ImageNet into dataset.root.

The transfers, checksums, progress bar (torch's tqdm) and extraction are torchvision's own utilities
(`torchvision.datasets.utils`: `download_url`, `check_integrity`, `calculate_md5`, `extract_archive`); this module
adds what a sweep needs around them:

- **Skipped when present.** A dataset whose extracted folder holds the files its loader reads is not fetched
  again (no network access, no lock). An archive already in the root with the published MD5 is extracted
  without being downloaded again.
- **Never a partial archive.** An archive is downloaded as `<name>.part` and renamed to its real name only after
  its MD5 matched; a `.part` left by an interrupted transfer is checked and fetched again (the utility always
  starts a transfer from byte 0: it sends no HTTP Range request, so an interrupted transfer is *restarted*, not
  continued). Python's http.client ends a body cut short by the server silently, so the MD5 is what catches a
  truncated transfer; a failed attempt (network error or checksum mismatch) is retried once (`ATTEMPTS`), then
  reported in one line (`DatasetError`) and the bad file removed.
- **Never a half-extracted folder.** The archive is extracted into a hidden temporary folder in the root and the
  dataset folder renamed into place, so an interrupted extraction leaves nothing that looks like the dataset.
- **One process at a time.** Parallel jobs and DDP ranks take a file lock per dataset in the root; the ones that
  wait find the dataset present and skip.
- **Mirrors.** `ORACLE_KD_DOWNLOAD_MIRROR=<base URL>` fetches every archive from `<base URL>/<archive name>`
  instead of its published address (a local mirror, a cluster cache, the tests' local server). The MD5s are
  checked all the same; a value that is not a URL (no scheme) is one line naming the variable, not retried.

ImageNet cannot be downloaded (its licence: image-net.org hands it out after its terms are accepted), and
digits ships with scikit-learn, so asking to download it does nothing.

The published addresses and MD5s (`ARCHIVES`) were checked against torchvision 0.29.1's own constants in
`torchvision/datasets/cifar.py`: `CIFAR10.url` = https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz,
`CIFAR10.tgz_md5` = c58f30108f718f92721af3b95e74349a, `CIFAR100.url` =
https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, `CIFAR100.tgz_md5` = eb9058c3a382ffc7106e4002c42a8d85
(identical). torchvision has no Tiny-ImageNet class; its address and MD5 (http://cs231n.stanford.edu/
tiny-imagenet-200.zip, 90528d7ca1a48142e341f4ef8d21d0de) are the ones ContinualAI/avalanche's
`benchmarks/datasets/tiny_imagenet/tiny_imagenet.py` (`TinyImagenet.filename`, `.md5`) and other public
loaders verify the zip with. `ARCHIVES` is a plain module-level table, so tests that serve generated archives
replace an entry's `md5` (e.g. `monkeypatch.setitem(ARCHIVES, "cifar10", replace(ARCHIVES["cifar10"], md5=...))`).
"""

from __future__ import annotations

import fcntl
import http.client
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from oracle_kd.data.imagefolder import IMAGENET_DIR, IMAGENET_URL, TINY_DIR, TINY_URL
from oracle_kd.errors import DatasetError, reason

log = logging.getLogger("oracle_kd")

MIRROR_ENV = "ORACLE_KD_DOWNLOAD_MIRROR"
CIFAR_BASE = "https://www.cs.toronto.edu/~kriz/"
ATTEMPTS = 2  # a failed transfer (network error, or a truncated/corrupt file) is fetched once more
TIMEOUT_S = 60.0  # a transfer that stalls this long counts as a network failure (socket default while fetching)
NOTHING_TO_FETCH = ("digits",)  # shipped with scikit-learn


@dataclass(frozen=True)
class Archive:
    """A published archive: where it is, its MD5, the folder it extracts to, and the paths (inside that
    folder) whose presence means the dataset is there."""

    url: str
    md5: str
    folder: str
    required: tuple[str, ...]

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(CIFAR_BASE + "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                       "cifar-10-batches-py",
                       tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")),
    "cifar100": Archive(CIFAR_BASE + "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                        "cifar-100-python", ("train", "test", "meta")),
    "tiny_imagenet": Archive(TINY_URL, "90528d7ca1a48142e341f4ef8d21d0de", TINY_DIR,
                             ("wnids.txt", "train", "val/images", "val/val_annotations.txt")),
}


def _mirror() -> str:
    return os.environ.get(MIRROR_ENV, "").strip()


def archive_url(archive: Archive) -> str:
    """The published address, or `$ORACLE_KD_DOWNLOAD_MIRROR/<archive name>` when that is set."""
    mirror = _mirror()
    return f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url


def imagenet_refusal(root: str | Path) -> DatasetError:
    return DatasetError(
        f"ImageNet cannot be downloaded automatically (its licence): get the ILSVRC-2012 train and val images "
        f"from {IMAGENET_URL} after accepting its terms of access, extract them as "
        f"{Path(root).expanduser().resolve()}/{IMAGENET_DIR}/{{train,val}}/<wnid>/*.JPEG (val sorted into class folders, "
        f"e.g. with valprep.sh), and run with dataset.download=false")


def ensure_dataset(name: str, root: str | Path) -> Path | None:
    """Make `<root>/<dataset folder>` present: skip if it is, else fetch (or reuse a verified archive),
    verify and extract. Returns the folder (None for digits). Every failure is a one-line DatasetError."""
    if name in NOTHING_TO_FETCH:
        return None
    if name == "imagenet":
        raise imagenet_refusal(root)
    if name not in ARCHIVES:
        raise DatasetError(f"dataset {name!r} has no download; put it under dataset.root by hand")
    archive = ARCHIVES[name]
    root = Path(root).expanduser().resolve()
    folder = root / archive.folder
    if folder.is_dir() and not _missing(folder, archive):
        return folder
    with _lock(root, archive):
        if folder.is_dir():  # complete now (another process extracted it while we waited), or incomplete
            missing = _missing(folder, archive)
            if not missing:
                return folder
            raise DatasetError(f"{folder} exists but is incomplete ({missing[0]} missing), so it was not replaced: "
                               f"move or remove it and relaunch with dataset.download=true to fetch it again")
        _extract(archive, _fetch(archive, root), root)
    log.info("%s is ready in %s", name, folder)
    return folder


def _missing(folder: Path, archive: Archive) -> list[str]:
    return [r for r in archive.required if not (folder / r).exists()]


@contextmanager
def _lock(root: Path, archive: Archive) -> Iterator[None]:
    """An exclusive lock per dataset in the root, so parallel jobs and DDP ranks fetch it once."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        f = open(root / f".{archive.folder}.download.lock", "a")  # "a": taking the lock never rewrites the file
    except OSError as exc:
        raise DatasetError(f"cannot write to dataset.root {root}: {exc.strerror or exc}; "
                           f"set dataset.root=<a writable folder>") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process fetching %s into %s", archive.filename, root)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """download_url opens its connections without a timeout; a stalled server would hang a job forever."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _fetch(archive: Archive, root: Path) -> Path:
    """The verified archive at <root>/<name>: reused if its MD5 matches, else removed and downloaded (as .part,
    renamed once verified), with one retry. A bad file is removed before the error is raised."""
    from torchvision.datasets.utils import calculate_md5, check_integrity, download_url  # lazy: slow import

    dest = root / archive.filename
    if check_integrity(str(dest), archive.md5):
        log.info("%s is there with the published MD5: not downloading it again", dest)
        return dest
    if dest.exists():  # never the published archive: a truncated or corrupt copy
        log.warning("%s is there but its MD5 is not %s: removing it and fetching it again", dest, archive.md5)
        dest.unlink()
    url, part = archive_url(archive), root / f"{archive.filename}.part"
    problem = ""
    for attempt in range(1, ATTEMPTS + 1):
        log.info("downloading %s to %s (attempt %d of %d)", url, dest, attempt, ATTEMPTS)
        try:
            with _socket_timeout(TIMEOUT_S):
                download_url(url, str(root), filename=part.name, md5=archive.md5)
        except RecursionError:  # too many redirects (before RuntimeError: it is one)
            problem = f"network failure fetching {url}: more than 3 redirects"
        except RuntimeError:  # the utility's "File not found or corrupted.": the MD5 did not match
            actual, size = (calculate_md5(str(part)), part.stat().st_size) if part.is_file() else ("none", 0)
            problem = (f"checksum mismatch for {archive.filename} from {url}: expected MD5 {archive.md5}, got "
                       f"{actual} ({size} bytes: a corrupt or interrupted transfer)")
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            problem = f"network failure fetching {url}: {_net_reason(exc)}"
        except ValueError as exc:  # urllib's "unknown url type": the published addresses are URLs, so the mirror
            raise DatasetError(f"{MIRROR_ENV}={_mirror()!r} is not a base URL ({reason(exc)}): set it to one such as "
                               f"https://<host>/<folder>/, or unset it to fetch the published address") from None
        except OSError as exc:  # writing the file (disk full, permissions)
            part.unlink(missing_ok=True)
            raise DatasetError(f"cannot write {part}: {exc.strerror or exc}") from None
        else:
            os.replace(part, dest)
            return dest
        part.unlink(missing_ok=True)
        log.warning("%s (attempt %d of %d)", problem, attempt, ATTEMPTS)
    where = f"set {MIRROR_ENV}=<base URL of a mirror> or put {archive.filename} into {root} by hand"
    if problem.startswith("checksum"):
        raise DatasetError(f"{problem}, after {ATTEMPTS} attempts; removed the corrupt file; relaunch to fetch it "
                           f"again, or {where}")
    raise DatasetError(f"{problem} (after {ATTEMPTS} attempts); check the connection, or {where}")


def _net_reason(exc: BaseException) -> str:
    inner = getattr(exc, "reason", None)  # URLError wraps the socket error
    return reason(inner if isinstance(inner, BaseException) else exc)


def _extract(archive: Archive, path: Path, root: Path) -> None:
    """Extract into a hidden temporary folder, check the layout, then rename the dataset folder into place."""
    from torchvision.datasets.utils import extract_archive  # lazy: slow import

    for stale in root.glob(f".{archive.folder}.extract-*"):  # left by a killed extraction (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.folder}.extract-", dir=root))
    try:
        log.info("extracting %s into %s", path, root)
        extract_archive(str(path), str(tmp))
        missing = _missing(tmp / archive.folder, archive)
        if missing:
            raise DatasetError(f"{path} does not hold {archive.folder}/{missing[0]}: not the published archive; "
                               f"remove it and relaunch to fetch it again")
        os.replace(tmp / archive.folder, root / archive.folder)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"cannot extract {path}: {reason(exc)}; remove it and relaunch to fetch it again") from None
    except OSError as exc:
        raise DatasetError(f"cannot extract {path} into {root}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
