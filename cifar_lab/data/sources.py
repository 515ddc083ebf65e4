"""Where CIFAR-10 and CIFAR-100 come from on disk, and the pickle-free array cache every run reads.

Two layouts are understood for each release (``cifar10``, ``cifar100``):

* ``<data_dir>/cifar10.npz`` (``cifar100.npz``): arrays only, loaded with ``allow_pickle=False``. Used when present.
* ``<data_dir>/cifar-10-batches-py/`` (``cifar-100-python/``): torchvision's download. Its batch files are pickles,
  and unpickling an unverified file can run arbitrary code, so every file's MD5 is compared with torchvision's
  published checksum *before* it is opened. It is read once and then written as the array file (atomically)
  for every later run.

Downloads go through ``fetch``: published MD5 checked before an archive is opened, a partial download never
left where a later run would read it, and ``$CIFAR_LAB_MIRROR`` to fetch the same file names from a mirror.
"""

import os
import pickle
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import calculate_md5, extract_archive
from tqdm import tqdm

from cifar_lab.data.augment import ChannelStats
from cifar_lab.errors import (
    ChecksumError,
    DataFormatError,
    DataNotFoundError,
    DownloadError,
)

IMAGE_SHAPE = (32, 32, 3)
MIRROR_ENV = "CIFAR_LAB_MIRROR"
PARTIAL_DIR = ".partial"  # downloads land here until they are complete and verified
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60  # without a byte for this long, a download has failed


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
    "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
]
CIFAR100_COARSE_CLASSES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]


@dataclass(frozen=True)
class Release:
    """One CIFAR release: torchvision's class (URL, archive MD5, batch files and their MD5s, read at call time so
    tests can patch them), the name of our array cache, each label set's class names and keys in the batch and meta
    files, and the per-channel statistics of its 50,000 training images (pixels in [0, 1])."""

    title: str
    torchvision_class: type[CIFAR10]
    array_file: str
    classes: dict[str, list[str]]
    label_keys: dict[str, tuple[str, str]]  # label set -> (labels key in a batch, class names key in the meta file)
    stats: ChannelStats


RELEASES = {
    "cifar10": Release("CIFAR-10", CIFAR10, "cifar10.npz", {"fine": CIFAR10_CLASSES},
                       {"fine": ("labels", "label_names")},
                       ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    "cifar100": Release("CIFAR-100", CIFAR100, "cifar100.npz",
                        {"fine": CIFAR100_CLASSES, "coarse": CIFAR100_COARSE_CLASSES},
                        {"fine": ("fine_labels", "fine_label_names"),
                         "coarse": ("coarse_labels", "coarse_label_names")},
                        ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
}


@dataclass(frozen=True)
class CifarArrays:
    """The whole dataset in memory, one label set: uint8 NHWC images and int64 labels per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


def label_array_names(label_set: str) -> tuple[str, str, str]:
    """Names in the array file of a label set's train labels, test labels and class names (fine: the plain ones,
    so a CIFAR-10 file has the same keys as ever)."""
    prefix = "" if label_set == "fine" else f"{label_set}_"
    return f"train_{prefix}labels", f"test_{prefix}labels", f"{prefix}classes"


def batches_dir(data_dir: Path, release: Release = RELEASES["cifar10"]) -> Path:
    return data_dir / release.torchvision_class.base_folder


def published_checksums(release: Release = RELEASES["cifar10"]) -> dict[str, str]:
    """File name -> MD5 of torchvision's batch files of ``release``."""
    source = release.torchvision_class
    return dict(source.train_list + source.test_list + [(source.meta["filename"], source.meta["md5"])])


def verify_batches(folder: Path, release: Release = RELEASES["cifar10"]) -> None:
    """Refuse any batch file that is missing or whose MD5 is not the published one."""
    for name, expected in published_checksums(release).items():
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(f"{path} is missing; delete {folder} and download {release.title} again")
        actual = calculate_md5(path)
        if actual != expected:
            raise ChecksumError(
                f"checksum mismatch for {path}: MD5 {actual}, expected {expected}. The file is corrupt or "
                f"not the official {release.title}; it was not unpickled. Delete {folder} and download again."
            )


def mirrored(url: str) -> str:
    """``url``, or its file name under ``$CIFAR_LAB_MIRROR`` when that is set (a mirror of the published files)."""
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{file_name(url)}" if mirror else url


def file_name(url: str) -> str:
    return url.split("?")[0].rsplit("/", 1)[-1]


def fetch(url: str, folder: Path, md5: str | None, what: str, extract: bool = False) -> Path:
    """Download ``url`` into ``folder`` (unpacked there when ``extract``), checked against ``md5`` when one is
    published. The file is written under ``folder/.partial/`` and moved into place only when complete and
    verified, so a failed or interrupted download leaves nothing a later run would read."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # fail before a long download, not after it
    except OSError as err:
        raise DownloadError(
            f"cannot download {what} into {folder}: the folder is not writable ({err.strerror}). Point "
            f"data.data_dir (or the CIFAR_LAB_DATA environment variable) at a writable folder."
        ) from err
    source, partial = mirrored(url), folder / PARTIAL_DIR
    download = partial / file_name(url)
    try:
        partial.mkdir(exist_ok=True)
        download_whole(source, download)
    except (OSError, HTTPException) as err:  # urllib's URLError is an OSError; a cut connection an HTTPException
        shutil.rmtree(partial, ignore_errors=True)
        raise DownloadError(
            f"downloading {what} from {source} into {folder} failed ({err}). Check the network (or "
            f"${MIRROR_ENV}), or copy the files into {folder} and set download to false."
        ) from err
    if md5 is not None and (actual := calculate_md5(download)) != md5:
        shutil.rmtree(partial, ignore_errors=True)
        raise ChecksumError(
            f"the download of {what} from {source} has MD5 {actual}, not the published {md5}: it is corrupt or "
            f"altered, and was deleted unopened. Download again, or copy the files into {folder}."
        )
    target = folder / download.name
    if extract:
        extract_archive(str(download), str(folder))
        shutil.rmtree(partial)
        return folder
    os.replace(download, target)
    shutil.rmtree(partial)
    return target


def download_whole(url: str, path: Path) -> None:
    """Stream ``url`` into ``path`` with a progress bar. A body shorter than its announced length is an error:
    urllib (and torchvision's downloader, built on it) would keep a cut-off file without a word."""
    request = urllib.request.Request(url, headers={"User-Agent": "cifar-lab"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, path.open("wb") as out:
        announced = response.headers.get("Content-Length")
        with tqdm(total=int(announced) if announced else None, unit="B", unit_scale=True, desc=path.name) as bar:
            while chunk := response.read(DOWNLOAD_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        written = out.tell()
    if announced is not None and written != int(announced):
        raise OSError(f"the connection ended after {written:,} of {int(announced):,} bytes")


def download_batches(data_dir: Path, release: Release = RELEASES["cifar10"]) -> None:
    """Fetch and unpack torchvision's archive of ``release`` (its MD5 is checked before it is unpacked; the files
    inside are verify_batches' job)."""
    source = release.torchvision_class
    fetch(source.url, data_dir, source.tgz_md5, release.title, extract=True)


def _unpickle(path: Path) -> dict:
    """Only for files verify_batches has passed: unpickling an unverified file can run arbitrary code."""
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")


def _read_split(folder: Path, files: Sequence[Sequence[str]], release: Release) -> dict[str, np.ndarray]:
    """NHWC uint8 images and the int64 labels of each label set, laid out as torchvision reads them.

    Hand-written because torchvision's CIFAR10/CIFAR100 hash every batch file again each time they are built.
    """
    entries = [_unpickle(folder / name) for name, _ in files]
    images = np.vstack([entry["data"] for entry in entries]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = {label_set: np.asarray([label for entry in entries for label in entry[key]], dtype=np.int64)
              for label_set, (key, _) in release.label_keys.items()}
    return {"images": images, **labels}


def read_batches(data_dir: Path, download: bool, release: Release = RELEASES["cifar10"]) -> dict[str, np.ndarray]:
    """Verified read of torchvision's batch files into the array file's contents (every label set), downloading
    them first if allowed and absent."""
    folder = batches_dir(data_dir, release)
    if not folder.exists() and download:
        download_batches(data_dir, release)
    verify_batches(folder, release)  # our own check first, and the only one: its error names the file
    source = release.torchvision_class
    splits = {"train": _read_split(folder, source.train_list, release),
              "test": _read_split(folder, source.test_list, release)}
    meta = _unpickle(folder / source.meta["filename"])
    arrays = {"train_images": splits["train"]["images"], "test_images": splits["test"]["images"]}
    for label_set, (_, names_key) in release.label_keys.items():
        train_key, test_key, classes_key = label_array_names(label_set)
        arrays |= {train_key: splits["train"][label_set], test_key: splits["test"][label_set],
                   classes_key: np.asarray(list(meta[names_key]), dtype=str)}
    return arrays


def save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write the array file atomically: a killed run never leaves a half-written cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_images(path: Path, name: str, images: np.ndarray, count: int | None = None) -> None:
    """uint8 ``[N,32,32,3]`` images (``count`` of them when given), or a one-line error naming the file."""
    shape = f"[{count if count is not None else 'N'},32,32,3]"
    if (images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE
            or (count is not None and len(images) != count)):
        raise DataFormatError(f"{path}: {name} must be uint8 {shape}, got {images.dtype} {list(images.shape)}")


def check_labels(path: Path, name: str, labels: np.ndarray, count: int, num_classes: int) -> None:
    """int64 labels, one per image, in ``[0, num_classes)``, or a one-line error naming the file."""
    if labels.dtype != np.int64 or labels.shape != (count,):
        raise DataFormatError(f"{path}: {name} must be int64 [{count}] to match the images, "
                              f"got {labels.dtype} {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFormatError(
            f"{path}: {name} must lie in [0, {num_classes - 1}], got [{labels.min()}, {labels.max()}]"
        )


def read_npy(path: Path, memory_mapped: bool = False) -> np.ndarray:
    """One ``.npy`` array, never unpickled (``memory_mapped``: read-only, read from disk when used); a file that is
    not one is a one-line error naming it."""
    try:
        return np.load(path, mmap_mode="r" if memory_mapped else None, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataFormatError(f"{path} is not a readable .npy array ({err}); delete it and get it again") from err


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataFormatError(f"{path} is not a readable array file ({err}); delete it to rebuild it") from err


def load_arrays(path: Path, label_set: str = "fine") -> CifarArrays:
    """Load and validate one label set of the array file (nothing in it is ever unpickled)."""
    npz = _read_npz(path)
    train_key, test_key, classes_key = label_array_names(label_set)
    missing = {"train_images", train_key, "test_images", test_key, classes_key} - set(npz)
    if missing:
        raise DataFormatError(f"{path}: missing arrays {sorted(missing)}; found {sorted(npz)}")
    classes = [str(c) for c in npz[classes_key]]
    for split, labels_key in (("train", train_key), ("test", test_key)):
        images = npz[f"{split}_images"]
        check_images(path, f"{split}_images", images)
        check_labels(path, labels_key, npz[labels_key], len(images), len(classes))
    return CifarArrays(
        train_images=npz["train_images"],
        train_labels=npz[train_key],
        test_images=npz["test_images"],
        test_labels=npz[test_key],
        classes=classes,
    )


def prepare(data_dir: Path, download: bool, release: Release = RELEASES["cifar10"]) -> Path:
    """Make sure ``release``'s array file exists in ``data_dir``, building it from the batch files if needed."""
    array_file = data_dir / release.array_file
    if array_file.exists():
        return array_file
    if not download and not batches_dir(data_dir, release).exists():
        raise DataNotFoundError(
            f"{release.title} not found: looked for {array_file} and {batches_dir(data_dir, release)}/. Set "
            f"data.download=true to fetch it, or point data.data_dir (or the CIFAR_LAB_DATA environment variable) "
            f"at a folder holding either one."
        )
    save_arrays(read_batches(data_dir, download, release), array_file)
    return array_file
