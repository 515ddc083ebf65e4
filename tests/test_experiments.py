"""``cifar-lab experiment`` (= ``scripts/run_experiment.py``): a suite's commands per variant and seed, running
them (in process, in parallel, killed and run again), and the comparison with spreads."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cifar_lab.cli import build_cli, main
from cifar_lab.errors import ExperimentFailedError
from cifar_lab.reporting.runs import load_run
from cifar_lab.tools.experiment import load_suite, parse_seeds, run_suite
from tests.helpers import CONFIGS, NO_FIGURES, ROOT, TINY_DATA, cli_env

EXPERIMENTS = CONFIGS / "experiments"
SCRIPT = ROOT / "scripts" / "run_experiment.py"
TINY_FIT = [*TINY_DATA, *NO_FIGURES, "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
            "--trainer.limit_test_batches", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar",
            "false", "--trainer.enable_model_summary", "false"]


def run_script(*args: str, cwd: Path, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=cli_env(data_dir), capture_output=True,
                          text=True, timeout=300)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def test_dry_run_prints_every_command_per_variant_and_seed_and_runs_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    main(["experiment", "batchnorm", "--dry-run", "--seeds", "0,5", "--epochs", "3", "--configs", str(EXPERIMENTS),
          "--", "--config", "configs/trainer/gpu.yaml"])
    suite = EXPERIMENTS / "batchnorm"
    fit = (f"cifar-lab fit --config {suite}/base.yaml --config {suite}/{{0}}.yaml --seed_everything {{1}} "
           f"--trainer.logger.init_args.save_dir runs/experiments/batchnorm --trainer.logger.init_args.name {{0}} "
           f"--trainer.logger.init_args.version seed_{{1}} --trainer.max_epochs 3 --config configs/trainer/gpu.yaml")
    test = ("cifar-lab test --config runs/experiments/batchnorm/{0}/seed_{1}/config.yaml "
            "--ckpt_path runs/experiments/batchnorm/{0}/seed_{1}/checkpoints/last.ckpt")
    runs = [(variant, seed) for variant in ("simple_cnn", "simple_cnn_bn") for seed in (0, 5)]
    assert capsys.readouterr().out.splitlines() == [
        *(line for run in runs for line in (fit.format(*run), test.format(*run))),
        "cifar-lab compare " + " ".join(f"runs/experiments/batchnorm/{v}/seed_{s}" for v, s in runs)
        + " --out runs/experiments --name batchnorm --baseline simple_cnn",
    ]
    assert list(tmp_path.iterdir()) == []


def test_every_suite_names_its_seeds_and_a_baseline_that_is_one_of_its_variants() -> None:
    for name in ("batchnorm", "augmentation", "optimizer", "pooling", "architecture", "mlp_vs_cnn"):
        suite = load_suite(name, EXPERIMENTS)
        assert suite.seeds == (0, 1, 2) and suite.baseline in suite.variants, name
        assert "suite" not in suite.variants  # suite.yaml is read by experiment, never fitted


def test_unknown_suite_is_a_one_line_error_listing_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "dropout", "--configs", str(EXPERIMENTS)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == ("cifar-lab: error: unknown experiment 'dropout'; choose one of ['architecture', "
                                       "'augmentation', 'batchnorm', 'depth_width', 'kernel_size', 'mlp_vs_cnn', "
                                       "'optimizer', 'pooling', 'schedules', 'shortcuts', 'transfer']\n")


def test_seeds_are_a_count_a_list_or_one_seed_with_a_trailing_comma() -> None:
    assert (parse_seeds("3"), parse_seeds("0,5,7"), parse_seeds("7,")) == ((0, 1, 2), (0, 5, 7), (7,))


@pytest.mark.parametrize(("options", "message"), [
    (["--seeds", "0"], "--seeds takes a count of at least 1 (3 means seeds 0, 1, 2) or a comma-separated list of "
                       "distinct seeds >= 0 (0,5,7; one seed alone: 7,), got '0'"),
    (["--seeds", "a,b"], "--seeds takes a count of at least 1 (3 means seeds 0, 1, 2) or a comma-separated list of "
                         "distinct seeds >= 0 (0,5,7; one seed alone: 7,), got 'a,b'"),
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
])
def test_bad_seeds_and_jobs_are_one_line_errors(options: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["experiment", "batchnorm", "--configs", str(EXPERIMENTS), "--dry-run", *options])
    assert capsys.readouterr().err == f"cifar-lab: error: {message}\n"


def test_a_baseline_that_is_not_a_variant_is_a_one_line_error(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "suites" / "tiny"
    suite.mkdir(parents=True)
    for name in ("base", "a", "b"):
        (suite / f"{name}.yaml").write_text("{}\n")
    (suite / "suite.yaml").write_text(yaml.safe_dump({"seeds": [0, 1], "baseline": "c"}))
    with pytest.raises(SystemExit):
        main(["experiment", "tiny", "--configs", str(tmp_path / "suites"), "--dry-run"])
    assert capsys.readouterr().err == (f"cifar-lab: error: {suite / 'suite.yaml'}: baseline 'c' is not a variant; "
                                       f"choose one of ['a', 'b']\n")


def test_suite_fits_and_tests_every_variant_per_seed_then_writes_the_table_with_spreads(
        npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    commands = []

    def in_process(command: list[str], log: object, env: dict[str, str]) -> int:  # faster than subprocesses
        commands.append((command[1], command[command.index("--seed_everything") + 1] if command[1] == "fit" else ""))
        build_cli(command[1:])
        return 0

    paths = run_suite(load_suite("batchnorm", EXPERIMENTS), seeds=(0, 1), epochs=1,
                      extra=["--data.data_dir", str(npz_dir), *TINY_FIT], execute=in_process)
    assert commands == [("fit", "0"), ("test", ""), ("fit", "1"), ("test", "")] * 2
    tables = "runs/experiments/batchnorm"  # the default: beside the runs, ignored by git
    assert [p.as_posix() for p in paths] == [f"{tables}.md", f"{tables}.csv", f"{tables}.png"]
    assert not Path("results").exists()  # the committed tables are written only when asked (--out results)
    rows = csv_rows(paths[1])
    assert [(row["group"], row["n"], row["epochs"]) for row in rows] == [("simple_cnn", "2", "1"),
                                                                         ("simple_cnn_bn", "2", "1")]
    for row in rows:  # each run kept its seed, and the group's mean is the mean of its two runs' test accuracies
        runs = [load_run(tmp_path / tables / row["group"] / f"seed_{seed}") for seed in (0, 1)]
        assert [run.seed for run in runs] == [0, 1]
        assert float(row["test_acc_mean"]) == pytest.approx(sum(run.last("test/acc") for run in runs) / 2)
    assert rows[0]["test_acc_vs_simple_cnn"] == "" and rows[1]["test"] == "paired"
    assert "wrote runs/experiments/batchnorm.md" in capsys.readouterr().out
    commands.clear()
    run_suite(load_suite("batchnorm", EXPERIMENTS), seeds=(0, 1), epochs=1, test_best_val=True,
              extra=["--data.data_dir", str(npz_dir), *TINY_FIT], execute=in_process)
    assert commands == [("test", "")] * 4  # finished runs: only their best-validation checkpoints are tested now
    for row, before in zip(csv_rows(paths[1]), rows):
        assert row["test_acc_mean"] == before["test_acc_mean"]  # last.ckpt's test/acc is still the result
        runs = [load_run(tmp_path / tables / row["group"] / f"seed_{seed}" / "best_val") for seed in (0, 1)]
        assert float(row["test_acc_best_val_ckpt_mean"]) == pytest.approx(sum(r.last("test/acc") for r in runs) / 2)
    with pytest.raises(ExperimentFailedError, match=r"seed_0 was trained with trainer.max_epochs=1 but 2 is asked "
                                                    r"for now; delete that folder"):
        run_suite(load_suite("batchnorm", EXPERIMENTS), seeds=(0, 1), epochs=2,
                  extra=["--data.data_dir", str(npz_dir), *TINY_FIT], execute=in_process)


def test_a_failing_fit_stops_the_suite_with_an_error_naming_the_command(npz_dir: Path, tmp_path: Path) -> None:
    result = run_script("batchnorm", "--configs", str(EXPERIMENTS), "--seeds", "1", "--epochs", "0", cwd=tmp_path,
                        data_dir=npz_dir)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    *_, child, last = result.stderr.strip().splitlines()
    assert child == "cifar-lab: error: trainer.max_epochs must be >= 1 (or -1 for no limit), got 0"
    assert last.startswith("cifar-lab: error: experiment batchnorm, simple_cnn seed 0: fit ended with exit code 1 "
                           "(see its output above): cifar-lab fit --config ")
    assert not (tmp_path / "runs/experiments/batchnorm/simple_cnn_bn").exists()  # the suite stopped


def files_with_times(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_killed_suite_run_again_keeps_finished_runs_and_finishes_the_rest_two_at_a_time(
        npz_dir: Path, tmp_path: Path) -> None:
    suites = tmp_path / "suites"
    (suites / "bn").mkdir(parents=True)  # one variant, three seeds: one run ends, one is cut, one never starts
    for name in ("base.yaml", "simple_cnn_bn.yaml"):
        (suites / "bn" / name).write_text((EXPERIMENTS / "batchnorm" / name).read_text())
    (suites / "bn" / "suite.yaml").write_text("seeds: [0, 1, 2]\n")
    command = [sys.executable, "-m", "cifar_lab", "experiment", "bn", "--configs", str(suites), "--epochs", "2"]
    runs = tmp_path / "runs/experiments/bn/simple_cnn_bn"
    first, second, third = (runs / f"seed_{seed}" for seed in range(3))
    driver = subprocess.Popen([*command, "--", *TINY_FIT], cwd=tmp_path, env=cli_env(npz_dir),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (second / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)  # until the second run has saved its first epoch
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert (first / "per_class_accuracy.md").is_file() and not (second / "per_class_accuracy.md").exists()
    finished = files_with_times(first)
    time.sleep(1)
    interrupted = files_with_times(second)
    time.sleep(2)
    assert files_with_times(second) == interrupted  # its fit died with the driver: nothing writes there any more
    assert not third.exists()

    again = subprocess.run([*command, "--jobs", "2", "--", *TINY_FIT], cwd=tmp_path, env=cli_env(npz_dir),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "simple_cnn_bn seed 0: finished earlier, kept" in again.stdout
    assert "simple_cnn_bn seed 1: resuming from last.ckpt" in again.stdout
    assert files_with_times(first) == finished  # not redone
    assert yaml.safe_load((second / "config.yaml").read_text())["ckpt_path"] == str(second.relative_to(tmp_path)
                                                                                    / "checkpoints" / "last.ckpt")
    [row] = csv_rows(runs.parent.parent / "bn.csv")
    assert (row["group"], row["n"]) == ("simple_cnn_bn", "3")
    threads = max(1, (os.cpu_count() or 1) // 2)  # two jobs share the cores
    for run in (second, third):
        assert yaml.safe_load((run / "config.yaml").read_text())["threads"] == threads
        assert "Seed set to" in (run / "experiment.log").read_text()  # concurrent output goes to a file per run
