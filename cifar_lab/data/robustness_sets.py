"""CIFAR-10.1 and CIFAR-10-C: test images of CIFAR-10's ten classes that a CIFAR-10 model has never seen, in their
official layouts under the data folder, downloaded from their published homes only when asked.

    <data_dir>/CIFAR-10.1/cifar10.1_v6_data.npy, cifar10.1_v6_labels.npy   new photos (Recht et al., 2019)
    <data_dir>/CIFAR-10-C/<corruption>.npy, labels.npy                    corrupted test images (Hendrycks &
                                                                          Dietterich, 2019)

Every file is a plain ``.npy`` array, never unpickled. A corruption file (150 MB) is memory-mapped, so its images
are read a batch at a time while it is evaluated, not all 19 files held in memory at once. Every file is checked
(shape, dtype, length, label range) before any model sees it: a long evaluation never stops at a bad file.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_lab.data.sources import (
    CIFAR10_CLASSES,
    check_images,
    check_labels,
    fetch,
    read_npy,
)
from cifar_lab.errors import DataFormatError, DataNotFoundError

NUM_CLASSES = len(CIFAR10_CLASSES)

CIFAR10_1_DIR = "CIFAR-10.1"
CIFAR10_1_FILES = ("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy")  # images, labels
CIFAR10_1_HOME = "https://github.com/modestyachts/CIFAR-10.1/raw/master/datasets"  # no checksum is published
CIFAR10_1_IMAGES = 2000

CIFAR10_C_DIR = "CIFAR-10-C"
CIFAR10_C_URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar"
CIFAR10_C_MD5 = "56bf5dcef84df0e2308c6dcbcbbd8499"  # listed on the Zenodo record
CIFAR10_C_LABELS = "labels.npy"
CIFAR10_C_PER_SEVERITY = 10_000  # the test split once per severity, severity 1 first
SEVERITIES = (1, 2, 3, 4, 5)
# The 15 corruptions of the benchmark (their mean is the mCA) and the 4 the release adds for validation.
BENCHMARK_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow",
    "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


@dataclass(frozen=True)
class ImageSet:
    """uint8 ``[N,32,32,3]`` images (possibly a view of a memory-mapped file) and their int64 labels."""

    images: np.ndarray
    labels: np.ndarray


def integer_labels(path: Path, labels: np.ndarray) -> np.ndarray:
    """The labels as int64 (the releases store them as uint8 or int64), or a one-line error naming the file."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{path}: labels must be integers, got {labels.dtype} {list(labels.shape)}")
    return labels.astype(np.int64, copy=False)


def cifar10_1(data_dir: Path, download: bool = False) -> ImageSet:
    """CIFAR-10.1 v6 from ``<data_dir>/CIFAR-10.1/``, its missing files fetched from GitHub when ``download``."""
    folder = data_dir / CIFAR10_1_DIR
    images_path, labels_path = (folder / name for name in CIFAR10_1_FILES)
    for path in (images_path, labels_path):
        if path.is_file():
            continue
        if not download:
            raise DataNotFoundError(
                f"CIFAR-10.1 not found: {path} is missing. Run with --download to fetch it from {CIFAR10_1_HOME}, "
                f"copy {' and '.join(CIFAR10_1_FILES)} into {folder}, or leave it out with --sets cifar10_c"
            )
        fetch(f"{CIFAR10_1_HOME}/{path.name}", folder, None, f"CIFAR-10.1 ({path.name})")
    images = read_npy(images_path)
    check_images(images_path, "images", images, CIFAR10_1_IMAGES)
    labels = integer_labels(labels_path, read_npy(labels_path))
    check_labels(labels_path, "labels", labels, len(images), NUM_CLASSES)
    return ImageSet(images, labels)


@dataclass(frozen=True)
class CorruptedImages:
    """The chosen corruption files of CIFAR-10-C, memory-mapped and checked, and the labels they share."""

    files: dict[str, np.ndarray]  # corruption -> uint8 [5 x per severity, 32, 32, 3], severity 1 first
    labels: np.ndarray

    def severity(self, corruption: str, severity: int) -> ImageSet:
        """The images of one corruption at one severity (1-5): a view of its file, read when used."""
        part = slice((severity - 1) * CIFAR10_C_PER_SEVERITY, severity * CIFAR10_C_PER_SEVERITY)
        return ImageSet(self.files[corruption][part], self.labels[part])


def cifar10_c(data_dir: Path, corruptions: list[str], download: bool = False) -> CorruptedImages:
    """The ``corruptions`` of CIFAR-10-C from ``<data_dir>/CIFAR-10-C/``, the release fetched from Zenodo (2.9 GB,
    MD5 checked before it is unpacked) when the folder is missing and ``download``."""
    folder = data_dir / CIFAR10_C_DIR
    if not folder.is_dir():
        if not download:
            raise DataNotFoundError(
                f"CIFAR-10-C not found: looked for {folder}/. Run with --download to fetch it (2.9 GB) from "
                f"{CIFAR10_C_URL}, unpack CIFAR-10-C.tar into {data_dir}, or leave it out with --sets cifar10_1"
            )
        fetch(CIFAR10_C_URL, data_dir, CIFAR10_C_MD5, "CIFAR-10-C", extract=True)
    count = len(SEVERITIES) * CIFAR10_C_PER_SEVERITY
    labels_path = present(folder / CIFAR10_C_LABELS, "leave CIFAR-10-C out with --sets cifar10_1")
    labels = integer_labels(labels_path, read_npy(labels_path))
    check_labels(labels_path, "labels", labels, count, NUM_CLASSES)
    files = {}
    for corruption in corruptions:
        path = present(folder / f"{corruption}.npy", "leave that corruption out with --corruptions")
        files[corruption] = read_npy(path, memory_mapped=True)
        check_images(path, corruption, files[corruption], count)
    return CorruptedImages(files, labels)


def present(path: Path, without: str) -> Path:
    """``path``, or a one-line error saying how to get the whole release again or do ``without`` the file."""
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing from CIFAR-10-C: delete {path.parent} and run with --download "
                                f"to fetch the release again, or {without}")
    return path
