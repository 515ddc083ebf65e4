import pickle
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torchvision
from torchvision.datasets import CIFAR10

from cifar_lab.data import sources
from cifar_lab.errors import (
    ChecksumError,
    DataFormatError,
    DataNotFoundError,
    DownloadError,
)
from tests.helpers import TEST_SIZE, TRAIN_PER_BATCH, make_images, write_npz


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
    arrays = sources.read_batches(batches_dir, download=False)
    for split, images, labels in (("train", arrays.train_images, arrays.train_labels),
                                  ("test", arrays.test_images, arrays.test_labels)):
        reference = CIFAR10(str(batches_dir), train=split == "train")
        np.testing.assert_array_equal(images, reference.data)
        np.testing.assert_array_equal(labels, np.asarray(reference.targets, dtype=np.int64))
        assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert arrays.classes == reference.classes


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


def test_tampered_batch_is_refused_before_unpickling(batches_dir: Path) -> None:
    marker = batches_dir / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    tampered = batches_dir / "cifar-10-batches-py" / "data_batch_3"
    tampered.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ChecksumError, match="checksum mismatch for .*data_batch_3"):
        sources.prepare(batches_dir, download=False)
    assert not marker.exists()
    assert not (batches_dir / "cifar10.npz").exists()


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


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(sources, "download_and_extract_archive", offline)
    with pytest.raises(DownloadError, match=f"downloading CIFAR-10 into {tmp_path} failed .*Name or service not known"):
        sources.prepare(tmp_path, download=True)
