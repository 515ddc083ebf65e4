"""Where CIFAR-10 comes from on disk, and the pickle-free array cache every run reads.

Two layouts are understood:

* ``<data_dir>/cifar10.npz``: arrays only, loaded with ``allow_pickle=False``. Used when present.
* ``<data_dir>/cifar-10-batches-py/``: torchvision's download. Its batch files are pickles, and
  unpickling an unverified file can run arbitrary code, so every file's MD5 is compared with
  torchvision's published checksum *before* it is opened. It is read once and then written as
  ``cifar10.npz`` (atomically) for every later run.
"""

import os
import pickle
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5, download_and_extract_archive

from cifar_lab.errors import (
    ChecksumError,
    DataFormatError,
    DataNotFoundError,
    DownloadError,
)

ARRAY_FILE = "cifar10.npz"
IMAGE_SHAPE = (32, 32, 3)


@dataclass(frozen=True)
class CifarArrays:
    """The whole dataset in memory: uint8 NHWC images and int64 labels per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


def batches_dir(data_dir: Path) -> Path:
    return data_dir / CIFAR10.base_folder


def published_checksums() -> dict[str, str]:
    """File name -> MD5 of torchvision's CIFAR-10 batch files (read at call time, so it can be patched)."""
    return dict(CIFAR10.train_list + CIFAR10.test_list + [(CIFAR10.meta["filename"], CIFAR10.meta["md5"])])


def verify_batches(folder: Path) -> None:
    """Refuse any batch file that is missing or whose MD5 is not the published one."""
    for name, expected in published_checksums().items():
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(f"{path} is missing; delete {folder} and download CIFAR-10 again")
        actual = calculate_md5(path)
        if actual != expected:
            raise ChecksumError(
                f"checksum mismatch for {path}: MD5 {actual}, expected {expected}. The file is corrupt or "
                f"not the official CIFAR-10; it was not unpickled. Delete {folder} and download again."
            )


def download_batches(data_dir: Path) -> None:
    """Fetch and unpack torchvision's archive (it checks the archive's MD5, not the files inside: those are
    verify_batches' job); an unwritable folder or no network is a clear error."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=data_dir).close()  # fail before a long download, not after it
    except OSError as err:
        raise DownloadError(
            f"cannot download CIFAR-10 into {data_dir}: the folder is not writable ({err.strerror}). Point "
            f"data.data_dir (or the CIFAR_LAB_DATA environment variable) at a writable folder."
        ) from err
    try:
        download_and_extract_archive(CIFAR10.url, str(data_dir), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except OSError as err:  # urllib's URLError is an OSError
        raise DownloadError(
            f"downloading CIFAR-10 into {data_dir} failed ({err}). Check the network, or copy cifar10.npz or "
            f"cifar-10-batches-py/ there and set data.download=false."
        ) from err


def _unpickle(path: Path) -> dict:
    """Only for files verify_batches has passed: unpickling an unverified file can run arbitrary code."""
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")


def _read_split(folder: Path, files: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """NHWC uint8 images and int64 labels of a split's batch files, laid out as torchvision's CIFAR10 reads them.

    Hand-written because torchvision's CIFAR10 hashes every batch file again each time it is constructed.
    """
    entries = [_unpickle(folder / name) for name, _ in files]
    images = np.vstack([entry["data"] for entry in entries]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray([label for entry in entries for label in entry["labels"]], dtype=np.int64)
    return images, labels


def read_batches(data_dir: Path, download: bool) -> CifarArrays:
    """Verified read of torchvision's batch files, downloading them first if allowed and absent."""
    folder = batches_dir(data_dir)
    if not folder.exists() and download:
        download_batches(data_dir)
    verify_batches(folder)  # our own check first, and the only one: its error names the file
    train_images, train_labels = _read_split(folder, CIFAR10.train_list)
    test_images, test_labels = _read_split(folder, CIFAR10.test_list)
    meta = _unpickle(folder / CIFAR10.meta["filename"])
    return CifarArrays(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=list(meta[CIFAR10.meta["key"]]),
    )


def save_arrays(arrays: CifarArrays, path: Path) -> None:
    """Write the array file atomically: a killed run never leaves a half-written cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                train_images=arrays.train_images,
                train_labels=arrays.train_labels,
                test_images=arrays.test_images,
                test_labels=arrays.test_labels,
                classes=np.asarray(arrays.classes, dtype=str),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise DataFormatError(
            f"{path}: {split}_images must be uint8 [N,32,32,3], got {images.dtype} {list(images.shape)}"
        )
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise DataFormatError(
            f"{path}: {split}_labels must be int64 [{len(images)}] to match {split}_images, "
            f"got {labels.dtype} {list(labels.shape)}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFormatError(
            f"{path}: {split}_labels must lie in [0, {num_classes - 1}], got [{labels.min()}, {labels.max()}]"
        )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataFormatError(f"{path} is not a readable array file ({err}); delete it to rebuild it") from err


def load_arrays(path: Path) -> CifarArrays:
    """Load and validate the array file (nothing in it is ever unpickled)."""
    npz = _read_npz(path)
    missing = {"train_images", "train_labels", "test_images", "test_labels", "classes"} - set(npz)
    if missing:
        raise DataFormatError(f"{path}: missing arrays {sorted(missing)}; found {sorted(npz)}")
    classes = [str(c) for c in npz["classes"]]
    for split in ("train", "test"):
        _check_split(path, split, npz[f"{split}_images"], npz[f"{split}_labels"], len(classes))
    return CifarArrays(
        train_images=npz["train_images"],
        train_labels=npz["train_labels"],
        test_images=npz["test_images"],
        test_labels=npz["test_labels"],
        classes=classes,
    )


def prepare(data_dir: Path, download: bool) -> Path:
    """Make sure ``<data_dir>/cifar10.npz`` exists, building it from the batch files if needed."""
    array_file = data_dir / ARRAY_FILE
    if array_file.exists():
        return array_file
    if not download and not batches_dir(data_dir).exists():
        raise DataNotFoundError(
            f"CIFAR-10 not found: looked for {array_file} and {batches_dir(data_dir)}/. Set data.download=true "
            f"to fetch it, or point data.data_dir (or the CIFAR_LAB_DATA environment variable) at a folder "
            f"holding either one."
        )
    save_arrays(read_batches(data_dir, download), array_file)
    return array_file
