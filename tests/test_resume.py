from pathlib import Path

import pytest
import yaml

from cifar_lab.cli.resume import expand_resume
from cifar_lab.errors import ConfigError


def _saved_run(root: Path) -> Path:
    run = root / "runs" / "simple_cnn" / "version_3"
    run.mkdir(parents=True)
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}}
    (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"logger": logger}, "checkpoint": {"dirpath": None}}))
    return run


def test_resume_from_the_training_folder_keeps_the_saved_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _saved_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = Path("runs/simple_cnn/version_3")
    assert expand_resume(["fit", "--resume", str(run), "--trainer.max_epochs", "9"]) == [
        "fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints/last.ckpt"),
        "--trainer.logger.init_args.save_dir", "runs", "--trainer.logger.init_args.name", "simple_cnn",
        "--trainer.logger.init_args.version", "version_3", "--trainer.max_epochs", "9",
    ]


def test_resume_from_elsewhere_writes_into_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _saved_run(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    args = expand_resume(["fit", f"--resume={run}"])
    assert args[args.index("--trainer.logger.init_args.save_dir") + 1] == str(tmp_path / "project" / "runs")
    assert args[-2:] == ["--checkpoint.enable_version_counter", "false"]  # overwrite last.ckpt, no last-v1.ckpt


def test_resume_needs_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.yaml not found"):
        expand_resume(["fit", "--resume", str(tmp_path)])
