"""Tiny CIFAR-format datasets written to a temporary folder, read back through the real loading code.

Images carry a class-dependent colour and stripe pattern plus noise, so a model can learn them in
a few steps while the data still has CIFAR-10's exact shapes, dtypes and file layouts.
"""

import hashlib
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.datasets import CIFAR10

from cifar_lab.data.datamodule import CIFAR10DataModule
from cifar_lab.module import ImageClassifier

CLASSES = CIFAR10DataModule.classes
TRAIN_PER_BATCH = 40  # 5 batch files -> 200 training images
TEST_SIZE = 60


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 [32,32,3] images whose colour and stripe period depend on the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n).astype(np.int64)
    palette = rng.integers(0, 256, (len(CLASSES), 3))
    rows = np.arange(32)[None, :, None, None]
    stripes = (rows // (labels[:, None, None, None] % 4 + 1)) % 2
    base = palette[labels][:, None, None, :] * (0.5 + 0.5 * stripes)
    images = np.clip(base + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return images, labels


def write_npz(folder: Path, n_train: int = 300, n_test: int = TEST_SIZE) -> Path:
    train_images, train_labels = make_images(n_train, seed=1)
    test_images, test_labels = make_images(n_test, seed=2)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar10.npz"
    np.savez(path, train_images=train_images, train_labels=train_labels, test_images=test_images,
             test_labels=test_labels, classes=np.asarray(CLASSES))
    return path


def _dump(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj))
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_batches(data_dir: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    """torchvision's cifar-10-batches-py layout; returns (train_list, test_list, meta md5)."""
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(name: str, n: int, seed: int) -> tuple[str, str]:
        images, labels = make_images(n, seed)
        flat = images.transpose(0, 3, 1, 2).reshape(n, -1)  # CIFAR's row layout: R, G, B planes
        return name, _dump(folder / name, {"data": flat, "labels": labels.tolist()})

    train_list = [batch(f"data_batch_{i}", TRAIN_PER_BATCH, seed=10 + i) for i in range(1, 6)]
    test_list = [batch("test_batch", TEST_SIZE, seed=20)]
    meta_md5 = _dump(folder / "batches.meta", {"label_names": CLASSES})
    return train_list, test_list, meta_md5


@pytest.fixture
def batches_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir with tiny batch files, torchvision's checksum table patched to match them."""
    data_dir = tmp_path / "data"
    train_list, test_list, meta_md5 = write_batches(data_dir)
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", test_list)
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": meta_md5})
    return data_dir


@pytest.fixture(scope="session")
def npz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding a tiny ``cifar10.npz`` (300 train / 60 test images)."""
    folder = tmp_path_factory.mktemp("npz")
    write_npz(folder)
    return folder


@pytest.fixture(scope="session")
def checkpoint(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simple_cnn checkpoint after two training steps on the tiny data (hyperparameters included)."""
    L.seed_everything(0)
    datamodule = CIFAR10DataModule(str(npz_dir), download=False, batch_size=32, num_workers=0, val_size=50)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(ImageClassifier("simple_cnn", class_names=CLASSES), datamodule)
    path = tmp_path_factory.mktemp("checkpoint") / "simple_cnn.ckpt"
    trainer.save_checkpoint(path)
    return path


def read_scalars(events: Path, tag: str) -> dict[int, float]:
    """step -> value of one TensorBoard tag, from an event file or a run folder (all its event files)."""
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}
