"""A run survives SIGKILL and resumes to the same result, repeats exactly, and stops when it diverges."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cifar_lab.cli import main
from tests.helpers import (
    CONFIGS,
    TINY_DATA,
    assert_same_weights,
    cifar_lab,
    cli_env,
    one_line_error,
    read_scalars,
)

EPOCHS = 3
STEPS_PER_EPOCH = 4
RUN = ["--config", str(CONFIGS / "simple_cnn.yaml"), "--config", str(CONFIGS / "trainer/cpu.yaml"), *TINY_DATA,
       "--trainer.max_epochs", str(EPOCHS), "--trainer.limit_train_batches", str(STEPS_PER_EPOCH),
       "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1", "--trainer.deterministic", "true",
       "--trainer.enable_progress_bar", "false"]
TAGS = ("val/acc", "val/loss", "train/loss_epoch", "train/acc")


def fit_in_process(save_dir: Path, data_dir: Path) -> Path:
    """The CLI's ``fit`` in this process (no start-up cost); returns the run folder."""
    main(["fit", *RUN, "--data.data_dir", str(data_dir), "--trainer.logger.init_args.save_dir", str(save_dir)])
    return save_dir / "simple_cnn" / "version_0"


@pytest.fixture(scope="module")
def straight_run(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_in_process(tmp_path_factory.mktemp("straight") / "runs", npz_dir)


def test_same_config_and_seed_give_identical_metrics_and_weights(straight_run: Path, npz_dir: Path,
                                                                  tmp_path: Path) -> None:
    again = fit_in_process(tmp_path / "runs", npz_dir)
    for tag in TAGS:
        first = read_scalars(straight_run, tag)
        assert len(first) == EPOCHS, tag  # once an epoch
        assert read_scalars(again, tag) == first, tag
    assert_same_weights(straight_run / "checkpoints/last.ckpt", again / "checkpoints/last.ckpt")
    assert yaml.safe_load((again / "config.yaml").read_text())["seed_everything"] == 42


def test_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(straight_run: Path, npz_dir: Path,
                                                                           tmp_path: Path) -> None:
    run = tmp_path / "runs" / "simple_cnn" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-m", "cifar_lab", "fit", *RUN], cwd=tmp_path, env=cli_env(npz_dir),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()  # SIGKILL: no clean-up, no final checkpoint
    assert process.wait() == -9
    assert torch.load(last, weights_only=True)["epoch"] < EPOCHS - 1  # it was stopped before the end

    result = cifar_lab("fit", "--resume", "runs/simple_cnn/version_0", cwd=tmp_path, data_dir=npz_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # resumed in place
    assert not list(last.parent.glob("last-v*"))  # and it carried on with its own last.ckpt
    assert_same_weights(last, straight_run / "checkpoints/last.ckpt")
    resumed_events = max(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    for tag in TAGS:
        resumed, straight = read_scalars(resumed_events, tag), read_scalars(straight_run, tag)
        assert resumed and resumed == {step: straight[step] for step in resumed}, tag


@pytest.fixture(scope="module")
def diverged(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A run whose learning rate grows 10^6-fold each epoch after a sane first epoch, its seed left to the run."""
    cwd = tmp_path_factory.mktemp("diverge")
    result = cifar_lab("fit", *RUN, "--seed_everything", "true",
                       "--model.lr_scheduler.class_path", "torch.optim.lr_scheduler.ExponentialLR",
                       "--model.lr_scheduler.init_args.gamma", "1e6", cwd=cwd, data_dir=npz_dir)
    return cwd / "runs" / "simple_cnn" / "version_0", result


def test_diverging_run_stops_naming_the_step_and_the_last_good_checkpoint(diverged) -> None:
    run, result = diverged
    line = one_line_error(result)
    last = run / "checkpoints" / "last.ckpt"
    named = re.search(r"training diverged: the training loss is (nan|inf) at step (\d+) \(epoch (\d+)\)\. "
                      r"Last good checkpoint: (\S+)\. ", line)
    assert named, line
    step, epoch, path = int(named[2]), int(named[3]), Path(named[4])
    assert path == last.relative_to(run.parents[2])  # as the run's logger (save_dir runs/) names it
    checkpoint = torch.load(last, weights_only=True)
    assert epoch < EPOCHS - 1 and checkpoint["epoch"] == epoch - 1  # stopped early; saved the epoch before
    assert checkpoint["global_step"] < step <= checkpoint["global_step"] + STEPS_PER_EPOCH
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert read_scalars(run, "train/diverged_at_step") == {checkpoint["global_step"] + STEPS_PER_EPOCH: step}


def test_the_seed_the_run_chose_is_written_to_the_saved_config(diverged) -> None:
    run, result = diverged
    seed = yaml.safe_load((run / "config.yaml").read_text())["seed_everything"]
    assert isinstance(seed, int) and not isinstance(seed, bool)
    assert re.findall(r"^Seed set to (\d+)$", result.stderr, re.MULTILINE) == [str(seed)]  # Lightning's own report
