import hashlib
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torchvision
from torchvision.datasets import CIFAR10, CIFAR100

from cifar_lab.data import sources
from cifar_lab.errors import (
    ChecksumError,
    DataFormatError,
    DataNotFoundError,
    DownloadError,
)
from tests.helpers import TEST_SIZE, TRAIN_PER_BATCH, make_images, write_npz
from tests.mirror import serving


def test_batches_are_read_once_into_an_array_cache(batches_dir: Path) -> None:
    path = sources.prepare(batches_dir, download=False)
    assert path == batches_dir / "cifar10.npz"
    arrays = sources.load_arrays(path)
    assert arrays.train_images.shape == (5 * TRAIN_PER_BATCH, 32, 32, 3)
    assert arrays.test_images.shape == (TEST_SIZE, 32, 32, 3)
    expected, labels = make_images(TRAIN_PER_BATCH, seed=11)  # data_batch_1, in file order
    np.testing.assert_array_equal(arrays.train_images[:TRAIN_PER_BATCH], expected)
    np.testing.assert_array_equal(arrays.train_labels[:TRAIN_PER_BATCH], labels)
    assert not [p for p in batches_dir.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing

    # Later runs read only the cache: the batch files are no longer needed.
    for f in (batches_dir / "cifar-10-batches-py").iterdir():
        f.unlink()
    assert sources.prepare(batches_dir, download=False) == path


def test_batches_are_read_as_torchvision_reads_them(batches_dir: Path) -> None:
    arrays = sources.load_arrays(sources.prepare(batches_dir, download=False))
    for split, images, labels in (("train", arrays.train_images, arrays.train_labels),
                                  ("test", arrays.test_images, arrays.test_labels)):
        reference = CIFAR10(str(batches_dir), train=split == "train")
        np.testing.assert_array_equal(images, reference.data)
        np.testing.assert_array_equal(labels, np.asarray(reference.targets, dtype=np.int64))
        assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert arrays.classes == reference.classes


def test_cifar100_batches_are_cached_with_both_label_sets_as_torchvision_reads_them(cifar100_batches_dir: Path) -> None:
    release = sources.RELEASES["cifar100"]
    path = sources.prepare(cifar100_batches_dir, download=False, release=release)
    assert path == cifar100_batches_dir / "cifar100.npz"
    fine, coarse = sources.load_arrays(path), sources.load_arrays(path, "coarse")
    for split in ("train", "test"):
        reference = CIFAR100(str(cifar100_batches_dir), train=split == "train")
        raw = pickle.loads((cifar100_batches_dir / "cifar-100-python" / split).read_bytes())
        np.testing.assert_array_equal(getattr(fine, f"{split}_images"), reference.data)
        np.testing.assert_array_equal(getattr(coarse, f"{split}_images"), reference.data)
        np.testing.assert_array_equal(getattr(fine, f"{split}_labels"), reference.targets)
        np.testing.assert_array_equal(getattr(coarse, f"{split}_labels"), raw["coarse_labels"])
    assert fine.classes == reference.classes == sources.CIFAR100_CLASSES
    assert coarse.classes == sources.CIFAR100_COARSE_CLASSES and len(coarse.classes) == 20


def test_a_cache_build_hashes_each_batch_file_once(batches_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = Counter()
    calculate_md5 = torchvision.datasets.utils.calculate_md5

    def counting_md5(path, *args, **kwargs) -> str:
        hashed[Path(path).name] += 1
        return calculate_md5(path, *args, **kwargs)

    monkeypatch.setattr(torchvision.datasets.utils, "calculate_md5", counting_md5)  # torchvision's own checks
    monkeypatch.setattr(sources, "calculate_md5", counting_md5)  # ours
    sources.prepare(batches_dir, download=False)
    assert hashed == Counter(sources.published_checksums().keys())


@pytest.mark.parametrize(("release", "fixture", "tampered"), [
    ("cifar10", "batches_dir", "cifar-10-batches-py/data_batch_3"),
    ("cifar100", "cifar100_batches_dir", "cifar-100-python/train"),
])
def test_tampered_batch_is_refused_before_unpickling(release: str, fixture: str, tampered: str,
                                                     request: pytest.FixtureRequest) -> None:
    data_dir = request.getfixturevalue(fixture)
    marker = data_dir / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (data_dir / tampered).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ChecksumError, match=f"checksum mismatch for .*{tampered}"):
        sources.prepare(data_dir, download=False, release=sources.RELEASES[release])
    assert not marker.exists()
    assert not list(data_dir.glob("*.npz"))


def test_missing_data_without_download_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        sources.prepare(tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar10.npz") in message
    assert "cifar-10-batches-py" in message and "download" in message


def _save(path: Path, **overrides) -> Path:
    write_npz(path.parent)
    arrays = dict(np.load(path))
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_images": np.zeros((4, 32, 32, 3), np.float32)}, "train_images must be uint8"),
        ({"test_images": np.zeros((4, 3, 32, 32), np.uint8)}, r"test_images must be uint8 \[N,32,32,3\]"),
        ({"train_labels": np.zeros(7, np.int64)}, "train_labels must be int64"),
        ({"test_labels": np.full(60, 10, np.int64)}, r"test_labels must lie in \[0, 9\]"),
        ({"classes": None}, r"missing arrays \['classes'\]"),
    ],
)
def test_invalid_array_file_is_a_clear_error(tmp_path: Path, overrides: dict, message: str) -> None:
    path = _save(tmp_path / "cifar10.npz", **overrides)
    with pytest.raises(DataFormatError, match=message):
        sources.load_arrays(path)


def test_array_file_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "cifar10.npz", classes=np.array([object()] * 10, dtype=object))
    with pytest.raises(DataFormatError, match="not a readable array file"):
        sources.load_arrays(path)


@pytest.fixture
def published_archive(tmp_path: Path, batches_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny batch files packed as torchvision's CIFAR-10 archive, in a folder to serve, its MD5 published."""
    served = tmp_path / "served"
    served.mkdir()
    archive = served / CIFAR10.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches_dir / CIFAR10.base_folder, arcname=CIFAR10.base_folder)
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    return archive


def test_download_fetches_checks_and_unpacks_the_published_archive(published_archive: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(published_archive.parent) as url:
        monkeypatch.setenv(sources.MIRROR_ENV, url)
        path = sources.prepare(tmp_path / "fresh", download=True)
    assert sources.load_arrays(path).train_images.shape == (5 * TRAIN_PER_BATCH, 32, 32, 3)
    assert not (tmp_path / "fresh" / sources.PARTIAL_DIR).exists()


def test_a_download_with_another_checksum_is_refused_before_it_is_unpacked(published_archive: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)
    with serving(published_archive.parent) as url, pytest.raises(ChecksumError, match="not the published 0{32}"):
        monkeypatch.setenv(sources.MIRROR_ENV, url)
        sources.prepare(tmp_path / "fresh", download=True)
    assert list((tmp_path / "fresh").iterdir()) == []  # nothing unpacked, nothing left half-downloaded


def test_a_cut_off_download_is_an_error_that_leaves_nothing_behind(published_archive: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(published_archive.parent, cut={CIFAR10.filename: 100}) as url, \
            pytest.raises(DownloadError, match=r"failed \(the connection ended after 100 of [\d,]+ bytes\)"):
        monkeypatch.setenv(sources.MIRROR_ENV, url)
        sources.prepare(tmp_path / "fresh", download=True)
    assert list((tmp_path / "fresh").iterdir()) == []


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(tmp_path) as url:  # serves an empty folder: 404
        monkeypatch.setenv(sources.MIRROR_ENV, url)
        with pytest.raises(DownloadError, match=f"downloading CIFAR-100 from {url}/cifar-100-python.tar.gz into "
                                                f"{tmp_path / 'data'} failed .*404"):
            sources.prepare(tmp_path / "data", download=True, release=sources.RELEASES["cifar100"])
