"""``scripts/run_experiment.py`` = ``cifar-lab experiment``: the commands of a suite, running them, the comparison."""

import subprocess
import sys
from pathlib import Path

import pytest

from cifar_lab.cli import build_cli, main
from cifar_lab.tools.experiment import load_suite, run_suite
from tests.helpers import CONFIGS, ROOT, cli_env

EXPERIMENTS = CONFIGS / "experiments"
SCRIPT = ROOT / "scripts" / "run_experiment.py"


def run_script(*args: str, cwd: Path, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=cli_env(data_dir), capture_output=True,
                          text=True, timeout=300)


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/experiments/batchnorm/simple_cnn/version_0").mkdir(parents=True)  # an earlier run
    main(["experiment", "batchnorm", "--dry-run", "--epochs", "3", "--configs", str(EXPERIMENTS), "--",
          "--config", "configs/trainer/gpu.yaml"])
    suite = EXPERIMENTS / "batchnorm"
    fit = (f"cifar-lab fit --config {suite}/base.yaml --config {suite}/{{0}}.yaml "
           f"--trainer.logger.init_args.save_dir runs/experiments/batchnorm --trainer.logger.init_args.name {{0}} "
           f"--trainer.max_epochs 3 --config configs/trainer/gpu.yaml")
    test = ("cifar-lab test --config runs/experiments/batchnorm/{0}/config.yaml "
            "--ckpt_path runs/experiments/batchnorm/{0}/checkpoints/last.ckpt")
    assert capsys.readouterr().out.splitlines() == [
        fit.format("simple_cnn"),
        test.format("simple_cnn/version_1"),
        fit.format("simple_cnn_bn"),
        test.format("simple_cnn_bn/version_0"),
        "cifar-lab compare runs/experiments/batchnorm/simple_cnn/version_1 "
        "runs/experiments/batchnorm/simple_cnn_bn/version_0 --out runs/experiments --name batchnorm",
    ]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "runs", "runs/experiments", "runs/experiments/batchnorm", "runs/experiments/batchnorm/simple_cnn",
        "runs/experiments/batchnorm/simple_cnn/version_0"]


def test_unknown_suite_is_a_one_line_error_listing_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "dropout", "--configs", str(EXPERIMENTS)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == ("cifar-lab: error: unknown experiment 'dropout'; choose one of ['architecture', "
                                       "'augmentation', 'batchnorm', 'optimizer', 'pooling']\n")


def test_suite_fits_and_tests_every_variant_then_writes_the_comparison(
        npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    commands = []

    def in_process(command: list[str]) -> int:  # the same commands as the subprocesses, faster
        commands.append(command[1])
        build_cli(command[1:])
        return 0

    extra = ["--data.data_dir", str(npz_dir), "--data.val_size", "50", "--data.batch_size", "32",
             "--data.num_workers", "0", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
             "--trainer.limit_test_batches", "2", "--trainer.accelerator", "cpu",
             "--trainer.enable_progress_bar", "false"]
    paths = run_suite(load_suite("batchnorm", EXPERIMENTS), epochs=1, extra=extra, execute=in_process)
    assert commands == ["fit", "test", "fit", "test"]
    tables = "runs/experiments/batchnorm"  # the default: beside the runs, ignored by git
    assert [p.as_posix() for p in paths] == [f"{tables}.md", f"{tables}.csv", f"{tables}.png"]
    assert not Path("results").exists()  # the committed tables are written only when asked (--out results)
    header, _, *rows = Path(f"{tables}.md").read_text().splitlines()
    cells = [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows]
    columns = [cell.strip() for cell in header.split("|")[1:-1]]
    assert [(row[0], row[columns.index("backbone")], row[columns.index("epochs")]) for row in cells] == [
        ("simple_cnn/version_0", "simple_cnn", "1"), ("simple_cnn_bn/version_0", "simple_cnn_bn", "1")]
    assert all(row[columns.index("test_acc")] for row in cells)  # each variant was tested
    assert Path(f"{tables}.png").stat().st_size > 0
    assert (tmp_path / "runs/experiments/batchnorm/simple_cnn_bn/version_0/per_class_accuracy.md").is_file()
    assert f"wrote {tables}.md" in capsys.readouterr().out


def test_a_failing_fit_stops_the_suite_with_an_error_naming_the_command(npz_dir: Path, tmp_path: Path) -> None:
    result = run_script("batchnorm", "--configs", str(EXPERIMENTS), "--epochs", "0", cwd=tmp_path, data_dir=npz_dir)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    *_, child, last = result.stderr.strip().splitlines()
    assert child == "cifar-lab: error: trainer.max_epochs must be >= 1 (or -1 for no limit), got 0"
    assert last.startswith("cifar-lab: error: experiment batchnorm, variant simple_cnn: fit ended with exit code 1 "
                           "(see its output above): cifar-lab fit --config ")
    assert not (tmp_path / "runs/experiments/batchnorm/simple_cnn_bn").exists()  # the suite stopped
