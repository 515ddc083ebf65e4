"""Fixtures: tiny CIFAR-format datasets in temporary folders (built by ``tests.helpers``) and a trained checkpoint."""

from pathlib import Path

import lightning as L
import pytest
from torchvision.datasets import CIFAR10

from cifar_lab.data.datamodule import CIFAR10DataModule
from cifar_lab.module import ImageClassifier
from tests.helpers import CLASSES, write_batches, write_npz


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
