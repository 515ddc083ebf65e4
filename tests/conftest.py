"""Fixtures: tiny CIFAR-format datasets in temporary folders (built by ``tests.helpers``) and a trained checkpoint."""

from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
from torchvision.datasets import CIFAR10, CIFAR100

from cifar_lab.data.datamodule import ImageDataModule
from cifar_lab.module import ImageClassifier
from tests.helpers import (
    CLASSES,
    ROOT,
    write_batches,
    write_cifar100_batches,
    write_cifar100_npz,
    write_npz,
)
from tests.worktree import files_in

WORKTREE_FILES = pytest.StashKey[set[Path]]()


# The slowest test files, slowest first: they start first, so the two pytest-xdist workers (a whole file each,
# --dist loadfile) end at about the same time instead of one running a long file alone at the end.
SLOWEST_FILES = ("test_sweep.py", "test_configs.py", "test_reliability.py", "test_cli.py", "test_experiments.py",
                 "test_ddp.py", "test_models.py", "test_dashboards.py", "test_docs.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[WORKTREE_FILES] = files_in(ROOT)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test left files in the working tree: tests write into temporary folders only."""
    left = sorted(map(str, files_in(ROOT) - session.config.stash.get(WORKTREE_FILES, set())))
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"tests left {len(left)} file(s) in the working tree: {', '.join(left[:10])}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def published(data_dir: Path, write: Callable[[Path], tuple[list, list, str]], release: type[CIFAR10],
              monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny batch files written by ``write`` into ``data_dir``, torchvision's checksum table of ``release`` patched
    to match them."""
    train_list, test_list, meta_md5 = write(data_dir)
    monkeypatch.setattr(release, "train_list", train_list)
    monkeypatch.setattr(release, "test_list", test_list)
    monkeypatch.setattr(release, "meta", {**release.meta, "md5": meta_md5})
    return data_dir


@pytest.fixture
def batches_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir with tiny CIFAR-10 batch files that pass the checksum check."""
    return published(tmp_path / "data", write_batches, CIFAR10, monkeypatch)


@pytest.fixture
def cifar100_batches_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir with tiny CIFAR-100 batch files that pass the checksum check."""
    return published(tmp_path / "data", write_cifar100_batches, CIFAR100, monkeypatch)


@pytest.fixture(scope="session")
def npz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding a tiny ``cifar10.npz`` and ``cifar100.npz`` (300 train / 60 test images each)."""
    folder = tmp_path_factory.mktemp("npz")
    write_npz(folder)
    write_cifar100_npz(folder)
    return folder


@pytest.fixture(scope="session")
def checkpoint(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simple_cnn checkpoint after two training steps on the tiny data (hyperparameters included)."""
    L.seed_everything(0)
    datamodule = ImageDataModule(str(npz_dir), download=False, batch_size=32, num_workers=0, val_size=50)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(ImageClassifier("simple_cnn", class_names=CLASSES), datamodule)
    path = tmp_path_factory.mktemp("checkpoint") / "simple_cnn.ckpt"
    trainer.save_checkpoint(path)
    return path
