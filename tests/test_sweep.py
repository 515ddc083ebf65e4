"""``cifar-lab sweep``: trials as ordinary runs in an Optuna study (SQLite here, PostgreSQL when a server can be
started), continued on rerun, shared by workers, retried after a kill, pruned when hopeless."""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from cifar_lab.cli import main
from cifar_lab.errors import ConfigError
from cifar_lab.reporting.runs import RunFolder
from cifar_lab.tools.search_space import check_options, load_space
from cifar_lab.tools import sweep as sweep_module
from cifar_lab.tools.sweep import Objective, parser, sweep_from
from tests.helpers import CONFIGS, NO_FIGURES, TINY_DATA, asked_config_in_process, cli_env, one_line_error

SPACE = {"model.optimizer.init_args.lr": {"float": [1.0e-3, 0.1], "log": True},
         "model.label_smoothing": {"float": [0.0, 0.3]}}
TRIAL_FIT = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
             "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", *TINY_DATA, *NO_FIGURES]


def sweep_command(folder: Path, *options: str, space: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "cifar_lab", "sweep", "--config", str(CONFIGS / "simple_cnn.yaml"),
            "--space", str(space or folder / "space.yaml"), "--out", str(folder / "sweep"), *options,
            "--", *TRIAL_FIT]


def run_sweep(folder: Path, data_dir: Path, *options: str, space: Path | None = None) -> subprocess.CompletedProcess:
    """The sweep driver in this process (its trials are processes of their own), as a finished process."""
    command = sweep_command(folder, *options, space=space)
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out, \
            contextlib.redirect_stderr(io.StringIO()) as err:
        patch.chdir(folder)
        patch.setattr(sweep_module, "asked_config", asked_config_in_process)
        for name, value in cli_env(data_dir).items():  # the trials' processes run this checkout on the tiny data
            patch.setenv(name, value)
        try:
            main(command[3:])
            code = 0
        except SystemExit as exit:
            code = int(exit.code or 0)
    return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())


def trials(folder: Path, study: str = "space", storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage or f"sqlite:///{folder / 'sweep' / 'study.db'}").trials


@pytest.fixture(scope="module")
def study(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished 2-trial study of simple_cnn on the tiny data, in SQLite."""
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    result = run_sweep(folder, npz_dir, "--trials", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result


def test_a_study_writes_a_run_folder_per_trial_a_table_and_a_best_config_that_fit_reruns_afresh(
        study: tuple[Path, subprocess.CompletedProcess], capsys: pytest.CaptureFixture[str]) -> None:
    folder, result = study
    sweep = folder / "sweep"
    assert sorted(p.name for p in (sweep / "trials").iterdir()) == ["trial_0", "trial_1"]
    for run in (sweep / "trials").iterdir():
        assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
        assert (run / "checkpoints" / "last.ckpt").is_file()
    finished = trials(folder)
    assert [t.state.name for t in finished] == ["COMPLETE", "COMPLETE"]
    rows = (sweep / "trials.csv").read_text().splitlines()
    assert rows[0] == "trial,state,val/acc,model.optimizer.init_args.lr,model.label_smoothing,seconds,run"
    assert [row.split(",")[:3] for row in rows[1:]] == [[str(t.number), "complete", str(t.value)] for t in finished]
    best = max(finished, key=lambda t: t.value)
    config = yaml.safe_load((sweep / "best.yaml").read_text())
    assert config["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(best.params["model.optimizer.init_args.lr"])
    assert config["model"]["label_smoothing"] == pytest.approx(best.params["model.label_smoothing"])
    assert "logger" not in config["trainer"] and config["trainer"]["callbacks"] is None  # no pruning, no version
    assert {p.name for p in sweep.glob("*.png")} == {"history.png", "importance.png", "parallel.png"}
    with pytest.raises(SystemExit) as printed:
        main(["fit", "--config", str(sweep / "best.yaml"), "--print_config"])
    assert printed.value.code in (0, None)
    printed_config = yaml.safe_load(capsys.readouterr().out)
    assert printed_config["trainer"]["logger"]["init_args"]["save_dir"] == "runs"  # a fresh run of its own
    assert f"trial {best.number}, val/acc {best.value:.4f}" in result.stdout + (sweep / "best.yaml").read_text()


def test_rerunning_with_more_trials_continues_the_study_and_two_jobs_share_it(
        study: tuple[Path, subprocess.CompletedProcess], npz_dir: Path) -> None:
    """Two trials at a time in one driver on the SQLite study (two drivers on one study: the PostgreSQL test)."""
    folder, _ = study
    result = run_sweep(folder, npz_dir, "--trials", "4", "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "study space in sqlite" in result.stdout and "2 of 4 trials finished" in result.stdout
    study_trials = trials(folder)
    numbers = [t.number for t in study_trials]
    assert len(numbers) == len(set(numbers)) >= 4 and numbers[:2] == [0, 1]  # kept the first two, added more
    assert sum(t.state.is_finished() for t in study_trials) >= 4  # a job may start one more as the last ends
    assert sorted(p.name for p in (folder / "sweep" / "trials").iterdir()) == sorted(f"trial_{n}" for n in numbers)
    assert all(result.stdout.count(f"trial {n} started") == 1 for n in numbers[2:])  # each ran once


def test_a_worker_killed_mid_trial_leaves_it_failed_and_the_next_run_retries_its_parameters(
        npz_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    slow = sweep_command(tmp_path, "--trials", "1", "--heartbeat", "1")
    slow[slow.index("--trainer.max_epochs") + 1] = "1000"
    worker = subprocess.Popen(slow, cwd=tmp_path, env=cli_env(npz_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    last = tmp_path / "sweep" / "trials" / "trial_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)  # until the trial has trained an epoch
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert [t.state.name for t in trials(tmp_path)] == ["RUNNING"]
    time.sleep(2.5)  # twice the heartbeat: the trial is now stale
    again = run_sweep(tmp_path, npz_dir, "--trials", "1", "--heartbeat", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    killed, retried = trials(tmp_path)
    assert (killed.state.name, retried.state.name) == ("FAIL", "COMPLETE")
    assert retried.params == killed.params  # the same point of the space, run again
    assert "trial 1 started" in again.stdout and "trial 1 finished" in again.stdout


def test_a_trial_whose_learning_rate_makes_it_diverge_is_pruned(npz_dir: Path, tmp_path: Path) -> None:
    space = tmp_path / "hopeless.yaml"
    space.write_text(yaml.safe_dump({"model.optimizer.init_args.lr": {"categorical": [1.0e+12]}}))
    result = run_sweep(tmp_path, npz_dir, "--trials", "1", space=space)
    assert result.returncode == 0, result.stderr[-3000:]
    [trial] = trials(tmp_path, study="hopeless")
    assert trial.state.name == "PRUNED"
    assert "trial 0 diverged after" in result.stdout and ": pruned" in result.stdout
    assert "no trial has completed yet" in (tmp_path / "sweep" / "trials.md").read_text()
    assert not (tmp_path / "sweep" / "best.yaml").exists()


def test_an_objective_the_runs_never_log_is_a_one_line_error_naming_what_they_log(
        study: tuple[Path, subprocess.CompletedProcess]) -> None:
    folder, _ = study
    args = parser().parse_args(["--config", str(CONFIGS / "simple_cnn.yaml"), "--space", str(folder / "space.yaml"),
                                "--objective", "val/accuracy", "--out", str(folder / "sweep")])
    objective = Objective(sweep_from(args, []))
    trial = optuna.trial.FixedTrial({})
    with pytest.raises(ConfigError, match=r"the objective val/accuracy was never logged by trial 0; its run logged "
                                          r"\[.*'val/acc'.*\]"):
        objective.result(trial, RunFolder(folder / "sweep" / "trials" / "trial_0"), 0, ["cifar-lab", "fit"], 1.0)


@pytest.mark.parametrize(("space", "message"), [
    ({"model.label_smoothing": {"uniform": [0, 1]}},
     "model.label_smoothing must name one distribution, e.g. 'model.label_smoothing: {float: [1.0e-3, 1.0], log: "
     "true}' (float, int or categorical); got {'uniform': [0, 1]}"),
    ({"model.label_smoothing": {"float": [0.3, 0.1]}}, "model.label_smoothing: low must be below high, got [0.3, 0.1]"),
    ({"model.optimizer.init_args.lr": {"float": [0.0, 1.0], "log": True}},
     "model.optimizer.init_args.lr: a log scale needs low > 0, got 0.0"),
    ({"data.batch_size": {"int": [64, 512.5]}}, "data.batch_size: int takes [low, high] as two integers, got [64, 512.5]"),
    ({"data.batch_size": {"categorical": []}}, "data.batch_size: categorical takes a non-empty list of values, got []"),
])
def test_a_malformed_distribution_is_a_one_line_error_saying_what_one_looks_like(
        space: dict, message: str, tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError) as error:
        load_space(path)
    assert str(error.value) == f"{path}: {message}"


def test_a_space_key_that_is_no_option_and_an_unreachable_storage_are_one_line_errors(
        npz_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"model.label_smothing": {"float": [0.0, 0.3]}}))
    result = run_sweep(tmp_path, npz_dir)
    assert one_line_error(result) == ("cifar-lab: error: search space: model.label_smothing is not an option of the "
                                      "base config; did you mean model.label_smoothing?")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    result = run_sweep(tmp_path, npz_dir, "--storage", "sqlite:////nonexistent/folder/study.db")
    assert one_line_error(result).startswith("cifar-lab: error: cannot open the study storage "
                                             "sqlite:////nonexistent/folder/study.db: ")
    assert not (tmp_path / "sweep" / "trials").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--trials", "0"], "--trials must be at least 1, got 0"),
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    (["--timeout", "-5"], "--timeout must be a number of seconds > 0, got -5.0"),
    (["--objective", "test/acc"], "--objective test/acc is a test metric; the test split never picks a setting: use "
                                  "a validation metric such as val/acc or val/loss"),
])
def test_sweep_settings_out_of_range_are_one_line_errors(options: list[str], message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    with pytest.raises(SystemExit):
        main(["sweep", "--config", str(CONFIGS / "simple_cnn.yaml"), "--space", str(tmp_path / "space.yaml"),
              *options, "--dry-run"])
    assert capsys.readouterr().err == f"cifar-lab: error: {message}\n"


def test_the_shipped_search_spaces_name_options_of_the_laptop_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "fast/cpu.yaml"), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    spaces = sorted((CONFIGS / "sweeps").glob("*.yaml"))
    assert [p.name for p in spaces] == ["cpu.yaml", "sgd.yaml"]
    for path in spaces:
        check_options(load_space(path), config)


def test_dry_run_prints_the_study_settings_and_the_space(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    main(["sweep", "--config", str(CONFIGS / "simple_cnn.yaml"), "--space", str(tmp_path / "space.yaml"),
          "--out", str(tmp_path / "sweep"), "--pruner", "hyperband", "--dry-run"])
    assert capsys.readouterr().out.splitlines() == [
        f"study: space in sqlite:///{tmp_path / 'sweep' / 'study.db'}",
        f"base configs: {CONFIGS / 'simple_cnn.yaml'}",
        "objective: val/acc, maximize (best over each trial's epochs)",
        "trials: 8 finished in all",
        "sampler: tpe (seed 0); pruner: hyperband",
        f"workers here: 1; trials in {tmp_path / 'sweep' / 'trials'}/trial_<n>/",
        "space:",
        "  model.optimizer.init_args.lr: float in [0.001, 0.1], log-uniform",
        "  model.label_smoothing: float in [0.0, 0.3], uniform",
    ]
    assert not (tmp_path / "sweep").exists()


# PostgreSQL: a throw-away cluster run as the ``postgres`` user (the server refuses to run as root), listening on
# a Unix socket only. Without the server binaries the test is skipped, except under CI, where it must run.
def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: on the PATH, or where Debian's package puts them."""
    on_path = shutil.which("initdb")
    found = [Path(on_path)] if on_path else sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def run_as_postgres(program: str, *args: str) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, str(postgres_bin() / program), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    if postgres_bin() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL's initdb/pg_ctl are not installed; .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    folder = Path(tempfile.mkdtemp(prefix="cifar-lab-pg-"))  # not under pytest's root-only temp folder
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    assert run_as_postgres("initdb", "-D", str(data), "-A", "trust", "-U", "postgres").returncode == 0
    started = run_as_postgres("pg_ctl", "-D", str(data), "-w", "-l", str(folder / "server.log"), "-o",
                              f"-k {folder} -c listen_addresses=''", "start")
    assert started.returncode == 0, started.stderr
    try:
        yield f"postgresql+psycopg2://postgres@/postgres?host={folder}"
    finally:
        run_as_postgres("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_a_postgresql_study_run_distinct_trials(postgres: str, npz_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    command = sweep_command(tmp_path, "--trials", "2", "--storage", postgres, "--study-name", "shared")
    workers = [subprocess.Popen(command, cwd=tmp_path, env=cli_env(npz_dir), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    shared = trials(tmp_path, study="shared", storage=postgres)
    assert len({t.number for t in shared}) == len(shared) >= 2
    assert sum(t.state.name == "COMPLETE" for t in shared) >= 2
    started = [line for out, _ in outputs for line in out.splitlines() if " started: " in line]
    assert len(started) == len(shared)  # no trial ran twice
