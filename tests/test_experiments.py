"""``cifar-lab experiment`` (= ``scripts/run_experiment.py``): a suite's commands per variant and seed, running
them (in process, in parallel, killed and run again), and the comparison with spreads."""

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cifar_lab.cli import main
from cifar_lab.errors import ExperimentFailedError
from cifar_lab.reporting.runs import load_run
from cifar_lab.tools import experiment
from cifar_lab.tools.experiment import load_suite, parse_seeds, run_suite
from tests.helpers import (
    CONFIGS,
    NO_FIGURES,
    ROOT,
    TINY_DATA,
    asked_config_in_process,
    cli_env,
)

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
    runs = [(variant, seed) for variant in ("bn", "bn_lr10x", "plain", "plain_lr10x") for seed in (0, 5)]
    assert capsys.readouterr().out.splitlines() == [
        *(line for run in runs for line in (fit.format(*run), test.format(*run))),
        "cifar-lab compare " + " ".join(f"runs/experiments/batchnorm/{v}/seed_{s}" for v, s in runs)
        + " --out runs/experiments --name batchnorm --baseline plain",
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


@dataclass
class FinishedSuite:
    """A suite run once in this process: the batchnorm suite's ``plain`` and ``bn`` variants and an ``exploding``
    one whose learning rate grows 10^30-fold after its first epoch, 2 seeds each."""

    cwd: Path
    paths: list[Path]
    ran: list[tuple[str, str]]  # the (command, seed) pairs of that first run
    out: str
    err: str
    commands: list[tuple[str, str]]  # what the in-process runner is asked to run, from then on

    def run_again(self, **options: Any) -> tuple[list[tuple[str, str]], str]:
        """Run the same suite again with ``options``; the commands it ran and what it printed."""
        self.commands.clear()
        with run_here(self.cwd), contextlib.redirect_stdout(io.StringIO()) as out:
            run_suite(**{**SUITE_OPTIONS, "suite": load_suite("lr", self.cwd / "suites"), **options})
        return list(self.commands), out.getvalue()


SUITE_OPTIONS: dict[str, Any] = {"seeds": (0, 1), "epochs": 2}


@contextlib.contextmanager
def run_here(cwd: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", ["cifar-lab"])
        patch.setattr(experiment, "asked_config", asked_config_in_process)
        yield


@pytest.fixture(scope="module")
def finished_suite(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FinishedSuite:
    cwd = tmp_path_factory.mktemp("suite")
    suite = cwd / "suites" / "lr"
    suite.mkdir(parents=True)
    for name in ("base.yaml", "plain.yaml", "bn.yaml"):
        (suite / name).write_text((EXPERIMENTS / "batchnorm" / name).read_text())
    exploding = yaml.safe_load((EXPERIMENTS / "batchnorm" / "plain.yaml").read_text())
    exploding["model"]["lr_scheduler"] = {"class_path": "torch.optim.lr_scheduler.ExponentialLR",
                                          "init_args": {"gamma": 1.0e30}}
    (suite / "exploding.yaml").write_text(yaml.safe_dump(exploding))
    (suite / "suite.yaml").write_text(yaml.safe_dump({"seeds": [0, 1], "baseline": "plain"}))
    commands: list[tuple[str, str]] = []

    def in_process(command: list[str], log: object, env: dict[str, str]) -> int:  # faster than subprocesses
        commands.append((command[1], command[command.index("--seed_everything") + 1] if command[1] == "fit" else ""))
        try:
            main(command[1:])
        except SystemExit as exit:  # how main() ends a command with a one-line error
            return int(exit.code)
        return 0

    SUITE_OPTIONS.update(execute=in_process, extra=["--data.data_dir", str(npz_dir), *TINY_FIT])
    with run_here(cwd), contextlib.redirect_stdout(io.StringIO()) as out, \
            contextlib.redirect_stderr(io.StringIO()) as err:
        paths = run_suite(load_suite("lr", suite.parent), **SUITE_OPTIONS)
    return FinishedSuite(cwd, paths, list(commands), out.getvalue(), err.getvalue(), commands)


def test_suite_fits_and_tests_every_variant_per_seed_then_writes_the_table_with_spreads(
        finished_suite: FinishedSuite) -> None:
    tested = [("fit", "0"), ("test", ""), ("fit", "1"), ("test", "")]
    assert finished_suite.ran == [*tested, ("fit", "0"), ("fit", "1"), *tested]  # bn, exploding, plain
    tables = "runs/experiments/lr"  # the default: beside the runs, ignored by git
    assert [p.as_posix() for p in finished_suite.paths] == [f"{tables}.md", f"{tables}.csv", f"{tables}.png"]
    assert not (finished_suite.cwd / "results").exists()  # the committed tables are written only when asked
    rows = {row["group"]: row for row in csv_rows(finished_suite.cwd / finished_suite.paths[1])}
    assert [(group, row["n"], row["epochs"]) for group, row in rows.items()] == [
        ("bn", "2", "2"), ("exploding", "2", "1"), ("plain", "2", "2")]
    for group in ("bn", "plain"):  # each run kept its seed; the group's mean is the mean of its runs' test accuracies
        runs = [load_run(finished_suite.cwd / tables / group / f"seed_{seed}") for seed in (0, 1)]
        assert [run.seed for run in runs] == [0, 1]
        assert float(rows[group]["test_acc_mean"]) == pytest.approx(sum(run.last("test/acc") for run in runs) / 2)
    assert rows["plain"]["test_acc_vs_plain"] == "" and rows["bn"]["test"] == "paired"
    assert "wrote runs/experiments/lr.md" in finished_suite.out


def test_a_diverging_variant_is_kept_untested_and_counted_as_diverged_while_the_suite_finishes(
        finished_suite: FinishedSuite) -> None:
    assert finished_suite.err.count("cifar-lab: error: training diverged: the training loss is") == 2
    assert finished_suite.out.count("kept and reported as diverged, not tested") == 2
    rows = {row["group"]: row for row in csv_rows(finished_suite.cwd / finished_suite.paths[1])}
    assert [(group, row["diverged"]) for group, row in rows.items()] == [("bn", "0"), ("exploding", "2"),
                                                                          ("plain", "0")]
    exploding = rows["exploding"]
    assert exploding["test_acc_mean"] == exploding["best_val_acc_mean"] == exploding["test_acc_vs_plain"] == ""
    for seed in (0, 1):
        run = load_run(finished_suite.cwd / "runs/experiments/lr/exploding" / f"seed_{seed}")
        assert run.last("test/acc") is None and run.last("train/diverged_at_step") > 0
    table = (finished_suite.cwd / finished_suite.paths[0]).read_text()
    assert "diverged: runs whose training loss turned NaN/inf" in table


def test_a_suite_run_again_tests_only_best_val_checkpoints_and_retries_no_diverged_run(
        finished_suite: FinishedSuite) -> None:
    tables = finished_suite.cwd / "runs/experiments"
    before = {row["group"]: row for row in csv_rows(tables / "lr.csv")}
    commands, out = finished_suite.run_again(test_best_val=True)
    assert commands == [("test", "")] * 4  # finished runs: only their best-validation checkpoints are tested now
    assert out.count("exploding seed") == 2 and out.count("diverged earlier (step ") == 2
    for group, row in {row["group"]: row for row in csv_rows(tables / "lr.csv")}.items():
        assert row["test_acc_mean"] == before[group]["test_acc_mean"]  # last.ckpt's test/acc is still the result
        if group != "exploding":
            runs = [load_run(tables / "lr" / group / f"seed_{seed}" / "best_val") for seed in (0, 1)]
            assert float(row["test_acc_best_val_ckpt_mean"]) == pytest.approx(sum(r.last("test/acc")
                                                                                  for r in runs) / 2)
    with pytest.raises(ExperimentFailedError, match=r"seed_0 was trained with trainer.max_epochs=2 but 3 is asked "
                                                    r"for now; delete that folder"):
        finished_suite.run_again(epochs=3)


def test_a_failing_fit_stops_the_suite_with_an_error_naming_the_command(npz_dir: Path, tmp_path: Path) -> None:
    result = run_script("batchnorm", "--configs", str(EXPERIMENTS), "--seeds", "1", "--epochs", "0", cwd=tmp_path,
                        data_dir=npz_dir)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    *_, child, last = result.stderr.strip().splitlines()
    assert child == "cifar-lab: error: trainer.max_epochs must be >= 1 (or -1 for no limit), got 0"
    assert last.startswith("cifar-lab: error: experiment batchnorm, bn seed 0: fit ended with exit code 1 "
                           "(see its output above): cifar-lab fit --config ")
    assert not (tmp_path / "runs/experiments/batchnorm/bn_lr10x").exists()  # the suite stopped


def files_with_times(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_killed_suite_run_again_keeps_finished_runs_and_finishes_the_rest_two_at_a_time(
        npz_dir: Path, tmp_path: Path) -> None:
    suites = tmp_path / "suites"
    (suites / "bn").mkdir(parents=True)  # one variant, three seeds: one run ends, one is cut, one never starts
    for name in ("base.yaml", "bn.yaml"):
        (suites / "bn" / name).write_text((EXPERIMENTS / "batchnorm" / name).read_text())
    (suites / "bn" / "suite.yaml").write_text("seeds: [0, 1, 2]\n")
    command = [sys.executable, "-m", "cifar_lab", "experiment", "bn", "--configs", str(suites), "--epochs", "2"]
    runs = tmp_path / "runs/experiments/bn/bn"
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

    # Run again in this process (its fits are subprocesses still, two at a time): no start-up of a second driver.
    with run_here(tmp_path), pytest.MonkeyPatch.context() as patch, \
            contextlib.redirect_stdout(io.StringIO()) as again:
        for name, value in cli_env(npz_dir).items():
            patch.setenv(name, value)
        experiment.main([*command[4:], "--jobs", "2", "--", *TINY_FIT])
    assert "bn seed 0: finished earlier, kept" in again.getvalue()
    assert "bn seed 1: resuming from last.ckpt" in again.getvalue()
    assert files_with_times(first) == finished  # not redone
    assert yaml.safe_load((second / "config.yaml").read_text())["ckpt_path"] == str(second.relative_to(tmp_path)
                                                                                    / "checkpoints" / "last.ckpt")
    [row] = csv_rows(runs.parent.parent / "bn.csv")
    assert (row["group"], row["n"]) == ("bn", "3")
    threads = max(1, (os.cpu_count() or 1) // 2)  # two jobs share the cores
    for run in (second, third):
        assert yaml.safe_load((run / "config.yaml").read_text())["threads"] == threads
        assert "Seed set to" in (run / "experiment.log").read_text()  # concurrent output goes to a file per run
