"""Search hyper-parameters with Optuna: every trial an ordinary ``fit`` run, the study in a database.

    cifar-lab sweep --config configs/fast/cpu.yaml --space configs/sweeps/cpu.yaml --trials 8
    cifar-lab sweep ... --jobs 2                         # two workers on this machine
    cifar-lab sweep ... --storage postgresql://host/db --study-name cpu   # one study, workers on many machines
    cifar-lab sweep ... --dry-run                        # print the study's settings and the space

Each trial is ``cifar-lab fit --config <base>... --<option> <value>...`` in a process of its own, logging into
``<out>/trials/trial_<n>/`` (TensorBoard, checkpoints, ``config.yaml``), with a pruning callback that reports
the objective (best ``val/acc`` by default) after every validation. The study lives in ``<out>/study.db``
(SQLite) unless ``--storage`` names another database; running the same command again continues it, and
``--trials N`` is the study's total of finished (complete or pruned) trials. A worker killed mid-trial stops
sending heartbeats: the next worker marks that trial failed and runs its parameters again. At the end the
sweep writes ``trials.md``/``.csv`` (every trial), ``best.yaml`` (the best trial's config, which
``cifar-lab fit --config best.yaml`` reruns as a fresh run) and Optuna's plots.
"""

import argparse
import json
import shlex
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import optuna
import sqlalchemy
import yaml
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from cifar_lab.callbacks.non_finite import DIVERGED_TAG
from cifar_lab.callbacks.trial_pruning import PRUNED_TAG, TrialPruning, make_pruner
from cifar_lab.errors import ConfigError, ExperimentFailedError, RunNotFoundError
from cifar_lab.reporting.runs import RUNS_DIR, RunFolder, load_run
from cifar_lab.reporting.tables import markdown_table, write_csv
from cifar_lab.tools.experiment import (
    PROGRAM,
    asked_config,
    job_resources,
    run_cli,
    split_fit_options,
)
from cifar_lab.tools.search_space import Dimension, check_options, load_space

SWEEPS_DIR = Path(RUNS_DIR) / "sweeps"
TRIALS = "trials"
TRIAL_LOG = "trial.log"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Run settings a trial gets from the sweep, not from the space: dropped from best.yaml, which reruns afresh.
TRIAL_ONLY = ("ckpt_path",)
SCHEMA_ATTEMPTS = 3


@dataclass(frozen=True)
class Sweep:
    """What a sweep searches, how, and where it keeps its study and trials."""

    configs: list[Path]
    space: list[Dimension]
    out: Path
    study_name: str
    storage: str
    objective: str = "val/acc"
    direction: str = "maximize"
    trials: int = 8
    timeout: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "median"
    pruner_startup_trials: int = 2
    heartbeat: int = 60
    jobs: int = 1
    extra: tuple[str, ...] = ()

    def fit_command(self, trial: optuna.Trial, params: dict[str, Any]) -> list[str]:
        """The trial's ``fit``: the base configs, the sampled values, its own run folder, the pruning callback."""
        pruning = {"class_path": f"{TrialPruning.__module__}.{TrialPruning.__name__}",
                   "init_args": {"storage": self.storage, "study_name": self.study_name, "trial_number": trial.number,
                                 "monitor": self.objective, "pruner": self.pruner,
                                 "pruner_startup_trials": self.pruner_startup_trials}}
        values = [part for name, value in params.items() for part in (f"--{name}", json.dumps(value))]
        return [PROGRAM, "fit", *(part for config in self.configs for part in ("--config", str(config))), *values,
                "--trainer.logger.init_args.save_dir", str(self.out), "--trainer.logger.init_args.name", TRIALS,
                "--trainer.logger.init_args.version", trial_folder_name(trial.number),
                f"--trainer.callbacks+={json.dumps(pruning)}", *self.extra]


def trial_folder_name(number: int) -> str:
    return f"trial_{number}"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def open_storage(url: str, heartbeat: int) -> RDBStorage:
    """The study's database, with heartbeats so that a killed worker's trial is failed and retried. Workers
    started together on a new database race to create Optuna's tables; a loser waits and tries again."""
    def connect() -> RDBStorage:
        return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))

    try:
        for _ in range(SCHEMA_ATTEMPTS - 1):
            try:
                return connect()
            except sqlalchemy.exc.IntegrityError:
                time.sleep(1.0)
        return connect()
    except Exception as err:  # SQLAlchemy's errors for a bad URL, a missing driver or a server not answering
        reason = " ".join(str(err).split("\n")[0].split())
        raise ConfigError(f"cannot open the study storage {url}: {reason}; check the URL, that the database "
                          f"server runs and that its driver is installed (e.g. psycopg2 for postgresql://)") from err


def load_study(sweep: Sweep) -> optuna.Study:
    """The sweep's study, created on first use; Optuna's notes that heartbeats, retries and the matplotlib
    plots are experimental and its per-trial log lines are left out (the sweep says what each trial did)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=open_storage(sweep.storage, sweep.heartbeat), study_name=sweep.study_name,
                               direction=sweep.direction, load_if_exists=True,
                               sampler=make_sampler(sweep.sampler, sweep.seed),
                               pruner=make_pruner(sweep.pruner, sweep.pruner_startup_trials))


class Objective:
    """Run one trial as a ``fit`` process and read its objective back from its TensorBoard logs."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.environments, self.thread_options = job_resources(sweep.jobs)
        self.slots = list(range(sweep.jobs))
        self.lock = threading.Lock()

    def __call__(self, trial: optuna.Trial) -> float:
        params = {dimension.name: dimension.suggest(trial) for dimension in self.sweep.space}
        run = RunFolder(self.sweep.out / TRIALS / trial_folder_name(trial.number))
        run.path.mkdir(parents=True, exist_ok=True)
        command = [*self.sweep.fit_command(trial, params), *self.thread_options]
        with self.lock:
            slot = self.slots.pop()
        try:
            say(f"trial {trial.number} started: {format_params(params)} -> {run.path}")
            start = time.perf_counter()
            with (run.path / TRIAL_LOG).open("a") as log:
                code = run_cli(command, log, self.environments[slot])
        finally:
            with self.lock:
                self.slots.append(slot)
        return self.result(trial, run, code, command, time.perf_counter() - start)

    def result(self, trial: optuna.Trial, run: RunFolder, code: int, command: list[str], seconds: float) -> float:
        """The best value of the objective over the trial's epochs; pruned when the pruner or the divergence
        guard stopped it; an error (the trial fails) when its fit failed otherwise."""
        try:
            logged = load_run(run.path)
        except RunNotFoundError:
            logged = None
        if logged is not None and logged.last(DIVERGED_TAG) is not None:
            say(f"trial {trial.number} diverged after {seconds:.0f} s: pruned")
            raise optuna.TrialPruned("the training loss turned NaN/inf")
        if code != 0 or logged is None:
            raise ExperimentFailedError(f"trial {trial.number}: fit ended with exit code {code} (see "
                                        f"{run.path / TRIAL_LOG}): {shlex.join(command)}")
        values = logged.values(self.sweep.objective)
        if not values:
            raise ConfigError(f"the objective {self.sweep.objective} was never logged by trial {trial.number}; "
                              f"its run logged {sorted(tag for tag in logged.scalars if '/' in tag)}")
        best = max(values) if self.sweep.direction == "maximize" else min(values)
        if logged.last(PRUNED_TAG) is not None:
            say(f"trial {trial.number} pruned after epoch {int(logged.last(PRUNED_TAG))} ({seconds:.0f} s)")
            raise optuna.TrialPruned(f"pruned after epoch {int(logged.last(PRUNED_TAG))}")
        say(f"trial {trial.number} finished in {seconds:.0f} s: {self.sweep.objective} {best:.4f}")
        return best


def say(line: str) -> None:
    print(f"{PROGRAM} sweep: {line}", flush=True)


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in params.items())


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_sweep(sweep: Sweep) -> list[Path]:
    """Run trials until the study holds ``sweep.trials`` finished ones (or ``timeout`` passes), then write the
    study's table, ``best.yaml`` and plots; returns the files written."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    study = load_study(sweep)  # first: a storage that cannot be reached is refused at once
    check_options(sweep.space, asked_config([PROGRAM, "fit", *(p for c in sweep.configs for p in ("--config", str(c))),
                                             *sweep.extra]))
    say(f"study {sweep.study_name} in {sweep.storage}: {finished_count(study)} of {sweep.trials} trials finished")
    if finished_count(study) < sweep.trials:
        study.optimize(Objective(sweep), n_jobs=sweep.jobs, timeout=sweep.timeout,
                       callbacks=[MaxTrialsCallback(sweep.trials, states=FINISHED)],
                       catch=(ExperimentFailedError,))
    return write_results(study, sweep)


def trial_rows(study: optuna.Study, sweep: Sweep) -> tuple[list[str], list[list[Any]]]:
    """One row per trial: number, state, objective, parameters, seconds and its run folder."""
    names = [dimension.name for dimension in sweep.space]
    header = ["trial", "state", sweep.objective, *names, "seconds", "run"]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else None
        value = trial.value if trial.state == TrialState.COMPLETE else None
        rows.append([trial.number, trial.state.name.lower(), value, *(trial.params.get(n) for n in names),
                     seconds, str(sweep.out / TRIALS / trial_folder_name(trial.number))])
    return header, rows


def formatted(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value


def best_config(study: optuna.Study, sweep: Sweep) -> dict[str, Any] | None:
    """The best complete trial's saved config without what only that trial needed: the pruning callback, its
    logger location and a checkpoint to resume."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    config = RunFolder(sweep.out / TRIALS / trial_folder_name(best.number)).config
    trainer = config.get("trainer") or {}
    trainer["callbacks"] = [callback for callback in trainer.get("callbacks") or []
                            if not str(callback.get("class_path", "")).endswith(TrialPruning.__name__)] or None
    trainer.pop("logger", None)  # the default logger: a fresh runs/<backbone>/version_N
    for key in TRIAL_ONLY:
        config.pop(key, None)
    return config


def write_results(study: optuna.Study, sweep: Sweep) -> list[Path]:
    header, rows = trial_rows(study, sweep)
    table, csv_file = sweep.out / "trials.md", sweep.out / "trials.csv"
    best = study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None
    summary = (f"Study {sweep.study_name}: {len(rows)} trials, {finished_count(study)} finished; objective "
               f"{sweep.objective} ({sweep.direction}, best over each trial's epochs, validation split); "
               + (f"best: trial {best.number}, {best.value:.4f} with {format_params(best.params)}." if best
                  else "no trial has completed yet."))
    table.write_text(markdown_table(header, [[formatted(v) for v in row] for row in rows],
                                    right_aligned=header[2:-1]) + "\n" + summary + "\n")
    write_csv(csv_file, header, rows)
    paths = [table, csv_file]
    config = best_config(study, sweep)
    if config is not None:
        best_file = sweep.out / "best.yaml"
        best_file.write_text(f"# The best trial of study {sweep.study_name} (trial {best.number}, {sweep.objective} "
                             f"{best.value:.4f}); rerun: cifar-lab fit --config {best_file}\n"
                             + yaml.safe_dump(config, sort_keys=False))
        paths.append(best_file)
    paths.extend(write_plots(study, sweep.out))
    print(table.read_text())
    say("wrote " + ", ".join(map(str, paths)))
    return paths


def write_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optuna's optimisation history, parameter importances and parallel coordinates (matplotlib), for the
    plots the finished trials allow (importances need two complete trials and a parameter that varied)."""
    from matplotlib import pyplot
    from optuna.visualization import matplotlib as plots

    paths = []
    for name, plot in (("history", plots.plot_optimization_history), ("importance", plots.plot_param_importances),
                       ("parallel", plots.plot_parallel_coordinate)):
        try:
            axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials for this plot
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        path = out / f"{name}.png"
        figure.savefig(path, dpi=80, bbox_inches="tight")
        pyplot.close(figure)
        paths.append(path)
    return paths


def describe(sweep: Sweep, out: IO[str]) -> None:
    """The ``--dry-run`` report: the study's settings and its space."""
    lines = [f"study: {sweep.study_name} in {sweep.storage}",
             f"base configs: {' '.join(map(str, sweep.configs))}" + (f" (then {shlex.join(sweep.extra)})"
                                                                      if sweep.extra else ""),
             f"objective: {sweep.objective}, {sweep.direction} (best over each trial's epochs)",
             f"trials: {sweep.trials} finished in all" + (f", at most {sweep.timeout:g} s per worker"
                                                           if sweep.timeout else ""),
             f"sampler: {sweep.sampler} (seed {sweep.seed}); pruner: {sweep.pruner}"
             + (f" after {sweep.pruner_startup_trials} finished trials" if sweep.pruner == "median" else ""),
             f"workers here: {sweep.jobs}; trials in {sweep.out / TRIALS}/trial_<n>/", "space:"]
    lines += [f"  {dimension.name}: {dimension.describe()}" for dimension in sweep.space]
    out.write("\n".join(lines) + "\n")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROGRAM} sweep", description=__doc__.split("\n")[0],
                                     epilog="options after -- go to every trial's fit, e.g. -- --trainer.max_epochs 3")
    parser.add_argument("--config", type=Path, action="append", required=True,
                        help="base config (repeat to compose, as for fit)")
    parser.add_argument("--space", type=Path, required=True, help="search-space YAML (see docs/sweeps.md)")
    parser.add_argument("--trials", type=int, default=8, help="finished trials the study should hold in all")
    parser.add_argument("--timeout", type=float, help="seconds after which this worker starts no more trials")
    parser.add_argument("--objective", default="val/acc", help="logged validation metric to optimise (default "
                                                               "val/acc; never a test metric)")
    parser.add_argument("--direction", choices=("maximize", "minimize"),
                        help="default: minimize for a loss, maximize otherwise")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    parser.add_argument("--pruner-startup-trials", type=int, default=2,
                        help="finished trials before the median pruner stops any (default 2)")
    parser.add_argument("--storage", help="Optuna RDB storage URL shared by the workers (default: sqlite "
                                          "<out>/study.db)")
    parser.add_argument("--study-name", help="default: the space file's name")
    parser.add_argument("--jobs", type=int, default=1, help="workers in this process (CPU cores or GPUs shared)")
    parser.add_argument("--heartbeat", type=int, default=60,
                        help="seconds between a worker's heartbeats; a trial silent for twice this is failed")
    parser.add_argument("--out", type=Path, help=f"sweep folder (default: {SWEEPS_DIR}/<study name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the study's settings and the space")
    return parser


def sweep_from(args: argparse.Namespace, extra: list[str]) -> Sweep:
    """The sweep the arguments ask for, every value checked before a trial starts."""
    for name, value, low in (("--trials", args.trials, 1), ("--jobs", args.jobs, 1), ("--heartbeat", args.heartbeat, 1),
                             ("--pruner-startup-trials", args.pruner_startup_trials, 0)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    if args.objective.startswith("test/"):
        raise ConfigError(f"--objective {args.objective} is a test metric; the test split never picks a setting: "
                          f"use a validation metric such as val/acc or val/loss")
    for config in args.config:
        if not config.is_file():
            raise ConfigError(f"--config {config} does not exist")
    space = load_space(args.space)
    name = args.study_name or args.space.stem
    out = args.out or SWEEPS_DIR / name
    direction = args.direction or ("minimize" if args.objective.endswith("loss") else "maximize")
    return Sweep(args.config, space, out, name, args.storage or f"sqlite:///{out / 'study.db'}", args.objective,
                 direction, args.trials, args.timeout, args.sampler, args.seed, args.pruner,
                 args.pruner_startup_trials, args.heartbeat, args.jobs, tuple(extra))


def main(argv: list[str]) -> None:
    own, extra = split_fit_options(argv)
    args = parser().parse_args(own)
    sweep = sweep_from(args, extra)
    if args.dry_run:
        describe(sweep, sys.stdout)
        return
    run_sweep(sweep)
