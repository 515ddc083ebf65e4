"""The bad-input catalogue (README, "Reliability"): each mistake, made through the CLI, ends with exit
code 1 and one ``cifar-lab: error:`` line naming the problem, and no traceback.

Unknown backbone and missing data without download are in test_cli.py.
"""

import pickle
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch

from cifar_lab.module import ImageClassifier
from tests.helpers import cli_error_line, write_batches, write_npz


PLATEAU = ["--model.lr_scheduler", '{"class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau"}']


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["--trainer.max_epoch", "3"], "unrecognized arguments: --trainer.max_epoch", id="unknown-option"),
        pytest.param(["--data.batch_size", "abc"], 'Parser key "data.batch_size": Expected a <class \'int\'>. '
                     "Got value: abc", id="wrong-type"),
        pytest.param(["--data.batch_size", "0"], "batch_size must be >= 1, got 0", id="zero-batch-size"),
        pytest.param(["--model.optimizer.init_args.lr", "-0.1"], "model.optimizer.init_args.lr must be > 0, got -0.1",
                     id="negative-lr"),
        pytest.param(["--trainer.max_epochs", "0"], "trainer.max_epochs must be >= 1 (or -1 for no limit), got 0",
                     id="zero-epochs"),
        pytest.param(["--data.val_size", "300"], "val_size=300 must be smaller than the 300 training images",
                     id="val-size-too-large"),
        pytest.param(["--data.train_fraction", "1.5"], "train_fraction must be in (0, 1]", id="train-fraction-above-1"),
        pytest.param(["--data.train_fraction", "0"], "train_fraction must be in (0, 1]", id="train-fraction-0"),
        pytest.param(["--data.num_workers", "-1"], "num_workers must be >= 0 (0 loads in the training process), got -1",
                     id="negative-workers"),
        pytest.param(["--non_finite_guard.check_every_n_steps", "0"],
                     "non_finite_guard.check_every_n_steps must be >= 1, got 0", id="guard-every-0-steps"),
        pytest.param(["--data.dataset", "folder"], "dataset folder needs data.data_dir", id="folder-without-dir"),
        pytest.param(["--data.labels", "coarse"], "CIFAR-10 has fine labels only, not 'coarse'",
                     id="coarse-labels-of-cifar10"),
        pytest.param(["--mid_epoch_checkpoint.every_n_minutes", "0"],
                     "mid_epoch_checkpoint.every_n_minutes must be > 0 (or null), got 0.0", id="mid-epoch-minutes-0"),
        pytest.param(["--mid_epoch_checkpoint.every_n_train_steps", "5"],
                     "mid_epoch_checkpoint: set every_n_minutes (10.0) or every_n_train_steps (5), not both",
                     id="mid-epoch-two-triggers"),
        pytest.param([*PLATEAU, "--model.scheduler_monitor", "val/top1"],
                     "model.scheduler_monitor 'val/top1' is not logged once per epoch; ReduceLROnPlateau can watch "
                     "one of ['train/acc', 'train/loss_epoch', 'val/acc', 'val/loss']",
                     id="plateau-monitor-not-logged"),
        pytest.param([*PLATEAU, "--model.scheduler_monitor", "val/acc"],
                     "ReduceLROnPlateau on val/acc needs mode: max (got 'min')", id="plateau-mode-against-monitor"),
        pytest.param([*PLATEAU, "--trainer.limit_val_batches", "0"],
                     "ReduceLROnPlateau watches val/loss, but this run has no validation", id="plateau-without-val"),
        pytest.param([*PLATEAU, "--model.scheduler_interval", "step"],
                     "ReduceLROnPlateau steps once per epoch", id="plateau-per-step"),
        pytest.param(["--model.lr_scheduler", '{"class_path": "torch.optim.lr_scheduler.SequentialLR", '
                      '"init_args": {"milestones": [1]}}'], "the following arguments are required: schedulers",
                     id="schedule-of-schedules"),
        pytest.param(["--data.normalize", "imagenet"], 'Parser key "data.normalize"', id="unknown-normalize"),
        pytest.param(["--data.augment", "fancy"], "unknown augment preset 'fancy'; choose one of",
                     id="unknown-augment"),
        pytest.param(["--trainer.precision", "16-mixed"], "trainer.precision=16-mixed needs a GPU", id="fp16-on-cpu"),
        pytest.param(["--trainer.accelerator", "cuda"], "CUDAAccelerator` can not run on your system",
                     id="accelerator-the-machine-lacks",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
        pytest.param(["--trainer.callbacks+=cifar_lab.callbacks.ThrottledProgressBar",
                      "--trainer.callbacks.redraws_per_second=0"],
                     "ThrottledProgressBar.redraws_per_second must be a number > 0 (redraws a second), got 0.0",
                     id="listed-callback-out-of-range"),
        pytest.param(["--trainer.callbacks+=cifar_lab.callbacks.Lookahead", "--trainer.callbacks.every_n_steps=0"],
                     "Lookahead.every_n_steps must be >= 1, got 0", id="lookahead-every-0-steps"),
        pytest.param(["--trainer.callbacks+=cifar_lab.callbacks.Lookahead", "--trainer.callbacks.decay=1.5"],
                     "Lookahead.decay must be in [0, 1], got 1.5", id="lookahead-decay-above-1"),
        pytest.param(["--model.num_classes", "100"], 'Linked "model.num_classes" must be given via "data.num_classes"',
                     id="num-classes-not-the-data's"),
    ],
)
def test_bad_setting(args: list[str], expected: str, npz_dir: Path, tmp_path: Path) -> None:
    assert expected in cli_error_line(tmp_path, npz_dir, *args)


def test_unknown_key_in_a_config_file(npz_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("trainer:\n  max_epoch: 3\n")
    line = cli_error_line(tmp_path, npz_dir, "--config", str(config))
    assert "does not accept option 'trainer.max_epoch'" in line


def test_images_of_the_wrong_size_in_the_array_file(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "data")
    arrays = dict(np.load(path))
    np.savez(path, **{**arrays, "train_images": arrays["train_images"][:, :28, :28]})
    line = cli_error_line(tmp_path, tmp_path / "data")
    assert "train_images must be uint8 [N,32,32,3], got uint8 [300, 28, 28, 3]" in line


class WriteMarker:
    """Unpickling this creates ``path``: proof that a file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_batch_file_with_a_wrong_checksum_is_not_unpickled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_batches(data)
    marker = tmp_path / "unpickled"
    (data / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(WriteMarker(marker)))
    line = cli_error_line(tmp_path, data)
    assert "checksum mismatch for" in line and "data_batch_1" in line and "not unpickled" in line
    assert not marker.exists()


def test_truncated_batch_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_batches(data)
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:1000])
    line = cli_error_line(tmp_path, data)
    assert "checksum mismatch for" in line and "data_batch_1" in line


def test_data_folder_that_cannot_be_written_when_downloading(tmp_path: Path) -> None:
    (tmp_path / "a_file").touch()  # a folder below a file can never be created, even by root
    line = cli_error_line(tmp_path, tmp_path / "a_file" / "data")
    assert f"cannot download CIFAR-10 into {tmp_path / 'a_file' / 'data'}: the folder is not writable" in line


def write_checkpoint(path: Path, model: ImageClassifier, with_hyperparameters: bool = True) -> Path:
    """A Lightning checkpoint holding ``model``, as ``trainer.save_checkpoint`` would write its weights."""
    checkpoint = {"pytorch-lightning_version": lightning.__version__, "state_dict": model.state_dict()}
    if with_hyperparameters:
        checkpoint["hyper_parameters"] = dict(model.hparams)
    torch.save(checkpoint, path)
    return path


def test_checkpoint_of_another_backbone(npz_dir: Path, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "resnet.ckpt", ImageClassifier("resnet18"), with_hyperparameters=False)
    line = cli_error_line(tmp_path, npz_dir, "--ckpt_path", str(checkpoint), subcommand="test")
    assert "the checkpoint holds another network (no hyperparameters saved) but this run builds backbone " \
           "'simple_cnn' with 10 classes" in line


def test_checkpoint_with_another_class_count(npz_dir: Path, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "five.ckpt", ImageClassifier("simple_cnn", num_classes=5))
    line = cli_error_line(tmp_path, npz_dir, "--ckpt_path", str(checkpoint), subcommand="test")
    assert "the checkpoint holds backbone 'simple_cnn' with 5 classes but this run builds backbone " \
           "'simple_cnn' with 10 classes" in line


def test_file_that_is_not_a_checkpoint(npz_dir: Path, tmp_path: Path) -> None:
    not_checkpoint = tmp_path / "notes.ckpt"
    not_checkpoint.write_text("a text file\n")
    line = cli_error_line(tmp_path, npz_dir, "--ckpt_path", str(not_checkpoint), subcommand="test")
    assert f"{not_checkpoint} is not a readable checkpoint" in line


def test_truncated_checkpoint(npz_dir: Path, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "last.ckpt", ImageClassifier("simple_cnn"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1000])
    line = cli_error_line(tmp_path, npz_dir, "--ckpt_path", str(checkpoint))
    assert f"{checkpoint} is not a readable checkpoint (truncated, corrupt" in line


def test_crafted_checkpoint_is_refused_without_running_its_code(npz_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": WriteMarker(marker)}, crafted)
    line = cli_error_line(tmp_path, npz_dir, "--ckpt_path", str(crafted), subcommand="test")
    assert "refuses to unpickle" in line
    assert not marker.exists()


def test_missing_checkpoint(npz_dir: Path, tmp_path: Path) -> None:
    line = cli_error_line(tmp_path, npz_dir, "--ckpt_path", str(tmp_path / "nope.ckpt"), subcommand="test")
    assert f"checkpoint {tmp_path / 'nope.ckpt'} does not exist" in line
