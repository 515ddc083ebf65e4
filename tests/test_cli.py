"""The CLI end to end, in subprocesses, as a user runs it."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.plugins.precision import MixedPrecision
from torchmetrics.functional.classification import multiclass_calibration_error

from cifar_lab.cli import build_cli, main
from cifar_lab.data import ImageDataModule
from cifar_lab.errors import UnknownBackboneError
from cifar_lab.module import load_classifier
from cifar_lab.reporting.runs import load_run
from tests.helpers import (
    CLASSES,
    NO_FIGURES,
    SMOKE,
    TEST_SIZE,
    assert_same_weights,
    cifar_lab,
    cli_error_line,
    read_scalars,
)

RUN = Path("runs") / "simple_cnn" / "version_0"  # where fit writes the first simple_cnn run


@pytest.fixture(scope="module")
def fitted_run(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fit`` with the smoke preset; returns the working folder."""
    cwd = tmp_path_factory.mktemp("fit")
    result = cifar_lab("fit", *SMOKE, "--data.num_workers", "1", cwd=cwd, data_dir=npz_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


def test_fit_writes_checkpoints_config_and_tensorboard_events(fitted_run: Path) -> None:
    run = fitted_run / RUN
    (val_acc,) = read_scalars(run, "val/acc").values()  # one epoch
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch000-val_acc{val_acc:.4f}.ckpt",
                                                                        "last.ckpt"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["backbone"] == "simple_cnn"
    assert config["seed_everything"] == 42
    assert config["trainer"]["max_epochs"] == 1


def printed_metrics(stdout: str) -> dict[str, float]:
    """The table Lightning prints at the end of ``test``, rows like ``│ test/acc │ 0.1166 │``."""
    rows = [line.split("│")[1:3] for line in stdout.splitlines() if line.startswith("│")]
    return {name.strip(): float(value) for name, value in rows}


def test_saved_config_repeats_the_run_and_test_reports_accuracy(fitted_run: Path, npz_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run, last = fitted_run / RUN, fitted_run / RUN / "checkpoints" / "last.ckpt"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR_LAB_DATA", str(npz_dir))
    main(["fit", "--config", str(run / "config.yaml")])  # in this process, which saves the start-up time
    assert_same_weights(tmp_path / RUN / "checkpoints" / "last.ckpt", last)
    assert read_scalars(tmp_path / RUN, "val/acc") == read_scalars(run, "val/acc")

    result = cifar_lab("test", "--config", str(run / "config.yaml"), "--ckpt_path", str(last), cwd=fitted_run,
                       data_dir=npz_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = printed_metrics(result.stdout)
    assert sorted(printed) == sorted(["test/acc", "test/acc_top5", "test/ece", "test/loss",
                                      *(f"test/acc_{c}" for c in CLASSES)])
    datamodule = ImageDataModule(str(npz_dir), download=False, num_workers=0, val_size=50)
    datamodule.setup("test")
    images, labels = map(torch.cat, zip(*datamodule.test_dataloader()))
    assert len(labels) == TEST_SIZE  # all of them within the smoke preset's limit_test_batches
    with torch.no_grad():
        probabilities = load_classifier(last)(images).softmax(dim=1)
    right = probabilities.argmax(dim=1) == labels
    assert printed["test/acc"] == pytest.approx(float(right.float().mean()))
    ece = multiclass_calibration_error(probabilities, labels, len(CLASSES), n_bins=15)
    assert printed["test/ece"] == pytest.approx(float(ece), abs=1e-6)
    assert list(read_scalars(run, "test/acc").values()) == pytest.approx([printed["test/acc"]])


def test_only_last_ckpt_tests_log_into_the_run_others_into_sub_folders_named_for_the_checkpoint(
        fitted_run: Path, npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "copy" / "version_0"
    shutil.copytree(fitted_run / RUN, run)
    checkpoints = run / "checkpoints"
    [best] = [path for path in checkpoints.iterdir() if path.name != "last.ckpt"]
    shutil.copy(checkpoints / "last.ckpt", checkpoints / "extra.ckpt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR_LAB_DATA", str(npz_dir))
    before, config = load_run(run).values("test/acc"), (run / "config.yaml").read_text()
    for checkpoint in (best, checkpoints / "extra.ckpt"):
        main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoint)])
    assert load_run(run).values("test/acc") == before  # the run's own test/acc stays last.ckpt's
    assert len(load_run(run / "best_val").values("test/acc")) == 1
    assert len(load_run(run / "tests" / "extra").values("test/acc")) == 1
    assert (run / "config.yaml").read_text() == config


def test_fit_runs_in_bf16_mixed_precision_on_the_cpu(npz_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    cli = build_cli(["fit", *SMOKE, *NO_FIGURES, "--trainer.precision", "bf16-mixed", "--data.data_dir", str(npz_dir),
                     "--trainer.limit_train_batches", "2"])
    plugin = cli.trainer.precision_plugin
    assert isinstance(plugin, MixedPrecision) and plugin.device == "cpu" and plugin.precision == "bf16-mixed"
    run = tmp_path / "runs" / "simple_cnn" / "version_0"
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}  # mixed: fp32 weights


def test_unknown_backbone_is_a_one_line_error(npz_dir: Path, tmp_path: Path) -> None:
    line = cli_error_line(tmp_path, npz_dir, "--model.backbone", "resnet19")
    assert "unknown backbone 'resnet19'" in line and "simple_cnn" in line and "resnet18" in line


def test_missing_data_without_download_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_data"
    line = cli_error_line(tmp_path, missing, "--data.download", "false")
    assert str(missing / "cifar10.npz") in line and "download" in line


def test_debug_variable_lets_the_error_through_with_its_traceback(npz_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    monkeypatch.setenv("CIFAR_LAB_DEBUG", "1")  # main() then raises instead of printing one line and exiting
    with pytest.raises(UnknownBackboneError, match="unknown backbone 'resnet19'"):
        main(["fit", *SMOKE, "--model.backbone", "resnet19", "--data.data_dir", str(npz_dir)])


def test_models_command_prints_parameters_and_mflops(capsys: pytest.CaptureFixture[str]) -> None:
    main(["models", "simple_cnn", "resnet18"])  # in this process: the console entry point has tests of its own
    header, rule, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["|", "backbone", "|", "parameters", "|", "MFLOPs", "|"]
    # simple_cnn: 10,848,768 multiply-adds (see test_models), ResNet-18: 555.4 million
    assert rows[0].split() == ["|", "`simple_cnn`", "|", "620,362", "|", "21.7", "|"]
    assert rows[1].split() == ["|", "`resnet18`", "|", "11,173,962", "|", "1,110.8", "|"]


def test_models_command_suggests_the_closest_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "resnet19"])
    [line] = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 1 and line.startswith("cifar-lab: error: ")
    assert "unknown backbone 'resnet19' (did you mean 'resnet18'?)" in line and "vgg16" in line


def test_fit_help_is_lightning_clis_and_the_top_level_help_names_the_models_command(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    with pytest.raises(SystemExit):
        build_cli(["--help"])
    assert "also: 'cifar-lab models' lists the backbones" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_cli(["fit", "--help"])
    assert "--model.backbone" in capsys.readouterr().out
