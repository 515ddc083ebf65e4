"""A run survives SIGKILL and resumes to the same result, repeats exactly, and stops when it diverges."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from cifar_lab.cli import main
from cifar_lab.module import EPOCH_METRICS_KEY
from cifar_lab.reporting.runs import load_run
from tests.helpers import (
    CONFIGS,
    TINY_DATA,
    assert_same_scalars,
    assert_same_weights,
    cifar_lab,
    every_n_steps,
    fit_until_killed,
    one_line_error,
    pause_at,
    read_scalars,
)

EPOCHS = 3
STEPS_PER_EPOCH = 4
RUN = ["--config", str(CONFIGS / "simple_cnn.yaml"), "--config", str(CONFIGS / "trainer/cpu.yaml"), *TINY_DATA,
       "--trainer.max_epochs", str(EPOCHS), "--trainer.limit_train_batches", str(STEPS_PER_EPOCH),
       "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1", "--trainer.deterministic", "true",
       "--trainer.enable_progress_bar", "false"]
TAGS = ("val/acc", "val/loss", "train/loss_epoch", "train/acc")


MID_EPOCH = every_n_steps(3)  # a last.ckpt at steps 3, 6, 9 as well: mid-epoch, with 4 steps an epoch


def fit_in_process(save_dir: Path, data_dir: Path, *args: str) -> Path:
    """The CLI's ``fit`` in this process (no start-up cost); returns the run folder."""
    main(["fit", *RUN, "--data.data_dir", str(data_dir), "--trainer.logger.init_args.save_dir", str(save_dir), *args])
    return save_dir / "simple_cnn" / "version_0"


@pytest.fixture(scope="module")
def straight_run(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_in_process(tmp_path_factory.mktemp("straight") / "runs", npz_dir)


@pytest.mark.parametrize("workers, persistent", [(0, True), (2, True), (4, False)])
def test_same_seed_with_any_number_of_workers_gives_identical_metrics_and_weights(
        straight_run: Path, npz_dir: Path, tmp_path: Path, workers: int, persistent: bool) -> None:
    again = fit_in_process(tmp_path / "runs", npz_dir, "--data.num_workers", str(workers),
                           "--data.persistent_workers", str(persistent).lower())
    for tag in TAGS:
        assert len(read_scalars(straight_run, tag)) == EPOCHS, tag  # once an epoch
    assert_same_scalars(again, straight_run)
    assert_same_weights(straight_run / "checkpoints/last.ckpt", again / "checkpoints/last.ckpt")
    assert yaml.safe_load((again / "config.yaml").read_text())["seed_everything"] == 42


def test_run_killed_mid_epoch_in_a_save_and_at_an_epoch_end_resumes_bit_identically(
        straight_run: Path, npz_dir: Path, tmp_path: Path) -> None:
    """Default workers (2): killed after the mid-epoch save of step 3, then half-way through writing the
    one of step 6, then after the epoch-end save of step 8; each time resumed with ``--resume``."""
    run = tmp_path / "runs" / "simple_cnn" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    resume = ["--resume", "runs/simple_cnn/version_0"]
    fit_until_killed(tmp_path, npz_dir, *RUN, *MID_EPOCH, "--data.num_workers", "2", *pause_at(3, tmp_path / "paused"))
    assert torch.load(last, weights_only=True)["global_step"] == 3
    fit_until_killed(tmp_path, npz_dir, *resume, *pause_at(6, tmp_path / "paused", during_write=True))
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the torn write left the epoch-end one
    assert (last.parent / ".last.ckpt.tmp").is_file()
    fit_until_killed(tmp_path, npz_dir, *resume, *pause_at(8, tmp_path / "paused"))
    before_this_change = tmp_path / "old" / "runs" / "simple_cnn" / "version_0"
    shutil.copytree(run, before_this_change)

    main(["fit", "--resume", str(run), "--trainer.plugins", "null", "--data.data_dir", str(npz_dir)])
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # resumed in place
    assert not list(last.parent.glob("last-v*"))  # and it carried on with its own last.ckpt
    assert_same_weights(last, straight_run / "checkpoints/last.ckpt")
    assert_same_scalars(run, straight_run)

    # The epoch-end checkpoint without what this change added to checkpoints resumes just as well.
    old_last = before_this_change / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(old_last, weights_only=True)
    del checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"], checkpoint[EPOCH_METRICS_KEY]
    checkpoint["callbacks"] = {key: value for key, value in checkpoint["callbacks"].items()
                               if not key.startswith("MidEpochCheckpoint")}
    torch.save(checkpoint, old_last)
    main(["fit", "--resume", str(before_this_change), "--trainer.plugins", "null", "--data.data_dir", str(npz_dir)])
    assert_same_weights(old_last, straight_run / "checkpoints/last.ckpt")


def test_device_loader_run_killed_mid_epoch_resumes_bit_identically(npz_dir: Path, tmp_path: Path) -> None:
    device = ["--data.loader", "device", "--data.batch_augment.cutout", "8"]
    straight = fit_in_process(tmp_path / "straight", npz_dir, *device)
    run = tmp_path / "runs" / "simple_cnn" / "version_0"
    fit_until_killed(tmp_path, npz_dir, *RUN, *MID_EPOCH, *device, *pause_at(6, tmp_path / "paused"))
    main(["fit", "--resume", str(run), "--trainer.plugins", "null", "--data.data_dir", str(npz_dir)])
    assert_same_weights(run / "checkpoints/last.ckpt", straight / "checkpoints/last.ckpt")
    assert_same_scalars(run, straight)


def test_compare_reads_a_run_whose_last_event_file_a_kill_cut_off(straight_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "simple_cnn" / "version_0"
    shutil.copytree(straight_run, run)
    [events] = run.glob("events.out.tfevents.*")
    whole = load_run(run).values("val/acc")
    events.write_bytes(events.read_bytes()[:-7])  # the kill came in the middle of the last record
    assert load_run(run).values("val/acc") == whole[: len(load_run(run).values("val/acc"))] != []
    main(["compare", str(run), "--out", str(tmp_path / "table"), "--per-run"])
    assert "simple_cnn" in (tmp_path / "table" / "comparison.md").read_text()


def test_a_full_disk_ends_the_run_with_one_line_naming_the_folder_and_keeps_the_last_checkpoint(
        npz_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = json.dumps({"class_path": "tests.kill_points.FullDiskCheckpointIO", "init_args": {"step": 8}})
    with pytest.raises(SystemExit) as exit_info:
        fit_in_process(tmp_path / "runs", npz_dir, "--trainer.plugins", plugin)
    folder = tmp_path / "runs" / "simple_cnn" / "version_0" / "checkpoints"
    assert exit_info.value.code == 1
    line = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(rf"cifar-lab: error: could not write checkpoint (epoch001-\S+|last)\.ckpt into {folder} \(No "
                        rf"space left on device\); the checkpoints already there are intact: free space or fix the "
                        rf"folder, then resume the run", line), line
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == STEPS_PER_EPOCH


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
