"""``fit --resume RUN_DIR`` as the parser resolves it: the run's config, its last.ckpt and its own logger folder."""

import sys
from pathlib import Path

import pytest
import yaml

from cifar_lab.cli import build_cli, main

LOGGER = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}}


def saved_run(root: Path) -> Path:
    run = root / "runs" / "simple_cnn" / "version_3"
    run.mkdir(parents=True)
    config = {"trainer": {"logger": LOGGER, "max_epochs": 4}, "model": {"backbone": "resnet18"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def resolved_config(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> dict:
    """The config ``cifar-lab fit <args>`` would run, as ``--print_config`` prints it."""
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_resume_from_the_training_folder_loads_the_run_config_and_keeps_its_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    saved_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = resolved_config(["--resume", "runs/simple_cnn/version_3", "--trainer.max_epochs", "9"], capsys,
                             monkeypatch)
    assert config["ckpt_path"] == "runs/simple_cnn/version_3/checkpoints/last.ckpt"
    assert config["model"]["backbone"] == "resnet18"  # from the run's config.yaml
    assert config["trainer"]["max_epochs"] == 9  # an option after --resume overrides the run's config
    logger = config["trainer"]["logger"]["init_args"]
    assert (logger["save_dir"], logger["name"], logger["version"]) == ("runs", "simple_cnn", "version_3")
    assert config["checkpoint"]["enable_version_counter"] is False  # last.ckpt is shared with mid_epoch_checkpoint
    assert "resume" not in config  # a saved config.yaml never resumes when the run is repeated


def test_resume_from_elsewhere_writes_into_the_run_folder_and_overwrites_its_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run = saved_run(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    config = resolved_config([f"--resume={run}"], capsys, monkeypatch)
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "project" / "runs")
    assert config["trainer"]["max_epochs"] == 4
    assert config["checkpoint"]["enable_version_counter"] is False  # last.ckpt, not a new last-v1.ckpt


def test_resume_without_a_run_folder_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    with pytest.raises(SystemExit):
        main(["fit", "--resume", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert err == (f"cifar-lab: error: --resume {tmp_path}: {tmp_path / 'config.yaml'} not found; give a run "
                   f"folder such as runs/simple_cnn/version_0")


def test_resume_is_refused_outside_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = saved_run(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    with pytest.raises(SystemExit):
        main(["test", "--resume", str(run)])
    assert "use it with 'cifar-lab fit'" in capsys.readouterr().err
