"""Two CPU processes with DDP (gloo) from the CLI: one run folder, rank-0 data preparation, synced test metrics."""

from pathlib import Path

import pytest
import torch

from cifar_lab.cli import main
from tests.helpers import (
    SMOKE,
    TEST_SIZE,
    assert_same_scalars,
    assert_same_weights,
    cifar_lab,
    every_n_steps,
    fit_until_killed,
    pause_at,
    read_scalars,
)

DDP = [*SMOKE, "--config", str(Path(__file__).resolve().parents[1] / "configs/trainer/ddp_cpu.yaml"),
       "--data.batch_size", "16", "--trainer.limit_test_batches", "1.0"]


@pytest.fixture(scope="module")
def ddp_run(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fit`` on 2 processes, each ``prepare_data`` call recorded by rank; returns the working folder."""
    cwd = tmp_path_factory.mktemp("ddp")
    result = cifar_lab("fit", *DDP, cwd=cwd, data_dir=npz_dir, module="tests.record_prepare_data",
                       env={"PREPARE_RECORD": str(cwd / "prepare_data.txt")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr  # the second process really ran
    return cwd


def test_ddp_fit_writes_one_run_folder_and_prepares_data_on_rank_0_only(ddp_run: Path) -> None:
    runs = ddp_run / "runs" / "simple_cnn"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    assert sorted(p.name for p in (runs / "version_0").glob("*.yaml")) == ["config.yaml", "hparams.yaml"]
    assert (runs / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert (ddp_run / "prepare_data.txt").read_text().split() == ["0"]


def test_ddp_test_accuracy_equals_one_process(ddp_run: Path, npz_dir: Path) -> None:
    assert TEST_SIZE % 2 == 0  # DistributedSampler pads an uneven split with repeated images
    run = ddp_run / "runs" / "simple_cnn" / "version_0"
    test = ["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    # Named versions: each test logs into a folder of its own, not into the fit run's.
    result = cifar_lab(*test, "--trainer.logger.init_args.version", "ddp_test", cwd=ddp_run, data_dir=npz_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr
    main([*test, "--trainer.devices", "1", "--trainer.strategy", "auto", "--data.data_dir", str(npz_dir),
          "--trainer.logger.init_args.save_dir", str(ddp_run / "single"), "--trainer.logger.init_args.version", "one"])
    two, one = ddp_run / "runs" / "simple_cnn" / "ddp_test", ddp_run / "single" / "simple_cnn" / "one"
    for tag in ("test/acc", "test/acc_top5", "test/acc_airplane", "test/acc_truck"):
        assert list(read_scalars(two, tag).values()) == list(read_scalars(one, tag).values()), tag
    for tag in ("test/loss", "test/ece"):  # sums over the samples in another order
        assert list(read_scalars(two, tag).values()) == pytest.approx(list(read_scalars(one, tag).values())), tag
    assert (two / "reliability_diagram.png").is_file()  # both ranks joined the gather of the bins, rank 0 wrote it


def test_ddp_run_killed_mid_epoch_resumes_to_the_same_weights_and_scalars(ddp_run: Path, npz_dir: Path,
                                                                         tmp_path: Path) -> None:
    """Both processes killed after the mid-epoch checkpoint of step 2 (of 4), then resumed on 2 processes."""
    fit_until_killed(tmp_path, npz_dir, *DDP, *every_n_steps(2), *pause_at(2, tmp_path / "paused"))
    run = tmp_path / "runs" / "simple_cnn" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    result = cifar_lab("fit", "--resume", "runs/simple_cnn/version_0", "--trainer.plugins", "null", cwd=tmp_path,
                       data_dir=npz_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    straight = ddp_run / "runs" / "simple_cnn" / "version_0"
    assert_same_weights(run / "checkpoints" / "last.ckpt", straight / "checkpoints" / "last.ckpt")
    assert_same_scalars(run, straight)
