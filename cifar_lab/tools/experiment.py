"""Run a comparison suite of configs/experiments/: fit and test every variant once per seed, then compare them.

A suite is ``configs/experiments/<suite>/base.yaml`` plus one small YAML per variant, each differing from the
others in one thing, and ``suite.yaml`` (read here, never by ``fit``) naming its default ``seeds`` and its
``baseline`` variant.

    cifar-lab experiment batchnorm                # every variant x the suite's seeds, then its table and plot
    cifar-lab experiment batchnorm --seeds 3      # seeds 0, 1, 2 (or --seeds 0,5,7)
    cifar-lab experiment batchnorm --jobs 2       # two runs at a time (the CPU cores, or one GPU each)
    cifar-lab experiment batchnorm --out results  # the same, writing the committed results/ tables
    cifar-lab experiment batchnorm --dry-run      # print the commands (e.g. for a cluster) and run nothing
    cifar-lab experiment batchnorm --test-best-val  # also test each run's best-validation checkpoint

Each run is ``cifar-lab fit --config base.yaml --config <variant>.yaml --seed_everything <s> [extra]``,
logging into ``runs/experiments/<suite>/<variant>/seed_<s>/``, then ``cifar-lab test`` of that run's
``last.ckpt`` (and, with ``--test-best-val``, of its best-validation checkpoint, reported in a column of
its own); last, ``cifar-lab compare`` of exactly those runs writes the suite's table and plot, one row
per variant with its spread over the seeds and its difference from the baseline. A run that the divergence
guard stops (its loss turned NaN/inf) is kept, not tested, and counted in the table's ``diverged`` column:
it is an answer, not a failure of the suite. Running the same command again skips finished and diverged runs,
resumes interrupted ones from their ``last.ckpt`` and starts the missing ones.
"""

import argparse
import contextlib
import fcntl
import functools
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from cifar_lab.callbacks.non_finite import DIVERGED_TAG
from cifar_lab.errors import ConfigError, ExperimentFailedError, RunNotFoundError
from cifar_lab.precision import automatic_precision
from cifar_lab.reporting.runs import RUNS_DIR, RunFolder, experiment_settings, load_run
from cifar_lab.tools import PARENT_PID_ENV
from cifar_lab.tools.compare import best_val_test, compare, differing

BASE = "base.yaml"
SUITE_FILE = "suite.yaml"
CONFIGS_DIR = Path("configs") / "experiments"
EXPERIMENT_RUNS = Path(RUNS_DIR) / "experiments"
TABLES_DIR = EXPERIMENT_RUNS  # beside the suites' runs, ignored by git; ``--out results`` for the committed tables
PROGRAM = "cifar-lab"
LOCK_FILE = ".experiment.lock"
LOG_FILE = "experiment.log"
DEFAULT_SEEDS = (0,)

Execute = Callable[[list[str], IO[str] | None, dict[str, str]], int]


@dataclass(frozen=True)
class Suite:
    """A base config, its variants (``name -> config file``, in name order), default seeds and baseline."""

    name: str
    base: Path
    variants: dict[str, Path]
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    baseline: str | None = None


@dataclass(frozen=True)
class Job:
    """One run of a suite: a variant with a seed, in its own run folder."""

    variant: str
    seed: int
    run: RunFolder
    fit: list[str]

    @property
    def name(self) -> str:
        return f"{self.variant} seed {self.seed}"


def suite_names(configs: Path) -> list[str]:
    """The suites under ``configs``: folders holding a ``base.yaml``."""
    return sorted(path.parent.name for path in configs.glob(f"*/{BASE}"))


def load_suite(name: str, configs: Path = CONFIGS_DIR) -> Suite:
    folder = configs / name
    if not (folder / BASE).is_file():
        if not configs.is_dir():
            raise ConfigError(f"no experiment configs at {configs}; run from the repository root or pass --configs")
        raise ConfigError(f"unknown experiment {name!r}; choose one of {suite_names(configs)}")
    variants = {path.stem: path for path in sorted(folder.glob("*.yaml")) if path.name not in (BASE, SUITE_FILE)}
    if not variants:
        raise ConfigError(f"{folder} has no variant configs beside {BASE}")
    settings = yaml.safe_load((folder / SUITE_FILE).read_text()) or {} if (folder / SUITE_FILE).is_file() else {}
    unknown = set(settings) - {"seeds", "baseline"}
    if unknown:
        raise ConfigError(f"{folder / SUITE_FILE}: unknown keys {sorted(unknown)}; it holds 'seeds' and 'baseline'")
    baseline = settings.get("baseline")
    if baseline is not None and baseline not in variants:
        raise ConfigError(f"{folder / SUITE_FILE}: baseline {baseline!r} is not a variant; choose one of "
                          f"{list(variants)}")
    seeds = parse_seeds(",".join(map(str, settings["seeds"]))) if settings.get("seeds") else DEFAULT_SEEDS
    return Suite(name, folder / BASE, variants, seeds, baseline)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``3`` -> seeds 0, 1, 2; ``0,5,7`` -> those seeds; ``7,`` -> seed 7 alone."""
    try:
        values = [int(part) for part in text.split(",") if part or "," not in text]
    except ValueError:
        values = []
    count = "," not in text
    if not values or any(v < 0 for v in values) or (count and values[0] < 1) or len(set(values)) < len(values):
        raise ConfigError(f"--seeds takes a count of at least 1 (3 means seeds 0, 1, 2) or a comma-separated list of "
                          f"distinct seeds >= 0 (0,5,7; one seed alone: 7,), got {text!r}")
    return tuple(range(values[0])) if count else tuple(values)


def fit_command(suite: Suite, variant: str, seed: int, epochs: int | None, extra: list[str]) -> list[str]:
    """``cifar-lab fit`` of one variant with one seed, logging into ``runs/experiments/<suite>/<variant>/seed_<s>``."""
    logger = "--trainer.logger.init_args"
    command = [PROGRAM, "fit", "--config", str(suite.base), "--config", str(suite.variants[variant]),
               "--seed_everything", str(seed), f"{logger}.save_dir", str(EXPERIMENT_RUNS / suite.name),
               f"{logger}.name", variant, f"{logger}.version", f"seed_{seed}"]
    if epochs is not None:
        command += ["--trainer.max_epochs", str(epochs)]
    return command + extra


def evaluation_command(run: RunFolder, checkpoint: Path | None = None) -> list[str]:
    """``cifar-lab test`` of a run's checkpoint (``last.ckpt`` unless given) with the run's own config; it logs
    into the run's folder (a best-validation checkpoint into its ``best_val/``)."""
    checkpoint = checkpoint or run.last_checkpoint
    return [PROGRAM, "test", "--config", str(run.config_file), "--ckpt_path", str(checkpoint)]


def best_val_evaluation_command(run: RunFolder) -> list[str]:
    """``cifar-lab test`` of the checkpoint of a finished run's best validation epoch."""
    best = run.best_val_checkpoint
    if best is None or not best.is_file():
        raise ExperimentFailedError(f"{run.path} has no best-validation checkpoint to test (checkpoint.monitor "
                                    f"null, or val/acc never logged); run the suite without --test-best-val")
    return evaluation_command(run, best)


def compare_command(runs: list[Path], out: Path, name: str, baseline: str | None) -> list[str]:
    return [PROGRAM, "compare", *map(str, runs), "--out", str(out), "--name", name,
            *(["--baseline", baseline] if baseline else [])]


def plan(suite: Suite, seeds: tuple[int, ...], epochs: int | None, extra: list[str]) -> list[Job]:
    return [Job(variant, seed, RunFolder(EXPERIMENT_RUNS / suite.name / variant / f"seed_{seed}"),
                fit_command(suite, variant, seed, epochs, extra))
            for variant in suite.variants for seed in seeds]


def run_cli(command: list[str], log: IO[str] | None = None, env: dict[str, str] | None = None) -> int:
    """Run a ``cifar-lab`` command in a new process of this Python, output to ``log`` or the terminal; the
    process ends when this one dies (``PARENT_PID_ENV``), so a killed suite leaves no fit writing on."""
    child_env = {**os.environ, **(env or {}), PARENT_PID_ENV: str(os.getpid())}
    return subprocess.run([sys.executable, "-m", "cifar_lab", *command[1:]], stdout=log, stderr=log,
                          env=child_env).returncode


@functools.cache
def asked_settings(command: tuple[str, ...]) -> dict[str, Any]:
    """``experiment_settings`` of the config a ``fit`` command would run (``--print_config``); the seed is not
    among them, so a variant's seeds share one answer. A null precision is what fit would choose for it here, as
    the saved config of a run records that choice."""
    config = asked_config(list(command))
    trainer = config.setdefault("trainer", {})
    if trainer.get("precision") is None:
        trainer["precision"] = automatic_precision(trainer.get("accelerator"))[0]
    return experiment_settings(config)


def asked_config(command: list[str]) -> dict[str, Any]:
    """The complete config a ``fit`` command would run, as ``--print_config`` resolves it."""
    result = subprocess.run([sys.executable, "-m", "cifar_lab", *command[1:], "--print_config"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise ExperimentFailedError(f"{shlex.join(command)} does not parse: {result.stderr.strip().splitlines()[-1]}")
    return yaml.safe_load(result.stdout)


def check_reusable(job: Job) -> None:
    """A run found on disk is continued only when it was started with the settings asked for now."""
    seed = job.fit.index("--seed_everything")
    saved, asked = experiment_settings(job.run.config), asked_settings(tuple(job.fit[:seed] + job.fit[seed + 2:]))
    different = differing([saved, asked])
    if different:
        key, (was, now) = next(iter(different.items()))
        raise ExperimentFailedError(f"{job.run.path} was trained with {key}={was!r} but {now!r} is asked for now; "
                                    f"delete that folder to train it again, or ask for the same settings")


def is_tested(run: RunFolder) -> bool:
    return run.config_file.is_file() and load_run(run.path).last("test/acc") is not None


def is_best_val_tested(run: RunFolder) -> bool:
    return best_val_test(load_run(run.path)) is not None


def lock(run: RunFolder) -> IO[str]:
    """Hold ``<run>/.experiment.lock`` while its fit and test run: a second suite driver on the same run
    folder is refused instead of writing into it too."""
    run.path.mkdir(parents=True, exist_ok=True)
    handle = (run.path / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        handle.close()
        raise ExperimentFailedError(f"another process is still writing into {run.path}; wait for it to end or stop "
                                    f"it, then run the suite again") from err
    return handle


class Progress:
    """One line per run started or ended, safe to call from the job threads."""

    def __init__(self, suite: Suite, total: int) -> None:
        self.suite, self.total, self.ended = suite, total, 0
        self.lock = threading.Lock()

    def say(self, job: Job, what: str, ended: bool = False) -> None:
        with self.lock:
            self.ended += ended
            print(f"{PROGRAM} experiment {self.suite.name} [{self.ended}/{self.total} done] {job.name}: {what}",
                  flush=True)


def run_job(job: Job, execute: Execute, progress: Progress, log_to_file: bool, env: dict[str, str],
            extra_fit: list[str], test_best_val: bool = False) -> None:
    """Fit (new, or resumed from ``last.ckpt``) and test one run, unless it is finished or diverged already;
    with ``test_best_val`` also test its best-validation checkpoint."""
    run = job.run
    tested = is_tested(run)
    diverged = None if tested else diverged_step(run)
    if tested or diverged is not None or (run.config_file.is_file() and run.last_checkpoint.is_file()):
        check_reusable(job)
    if diverged is not None:
        progress.say(job, f"diverged earlier (step {diverged}), kept as a diverged run ({run.path})", ended=True)
        return
    best_val_due = test_best_val and not (tested and is_best_val_tested(run))
    if tested and not best_val_due:
        progress.say(job, f"finished earlier, kept ({run.path})", ended=True)
        return
    with lock(run), (run.path / LOG_FILE).open("a") if log_to_file else contextlib.nullcontext() as log:
        start = time.perf_counter()
        if not tested and not fit_and_test(job, execute, progress, log, env, extra_fit):
            progress.say(job, f"diverged at step {diverged_step(run)} after {time.perf_counter() - start:.0f} s: "
                              f"kept and reported as diverged, not tested", ended=True)
            return
        if best_val_due:
            execute_or_fail(best_val_evaluation_command(run), job, execute, progress, log, env)
        accuracy = load_run(run.path).last("test/acc")
        progress.say(job, f"done in {time.perf_counter() - start:.0f} s, test/acc {accuracy:.4f}", ended=True)


def diverged_step(run: RunFolder) -> int | None:
    """The step where the run's training loss went NaN/inf, when the divergence guard stopped it."""
    try:
        step = load_run(run.path).last(DIVERGED_TAG)
    except RunNotFoundError:
        return None
    return None if step is None else int(step)


def fit_and_test(job: Job, execute: Execute, progress: Progress, log: IO[str] | None, env: dict[str, str],
                 extra_fit: list[str]) -> bool:
    """Fit (new, or resumed from ``last.ckpt``), then test ``last.ckpt``; False (and no test) when the fit
    diverged, which answers a question (e.g. "does this learning rate train?") instead of failing the suite."""
    run = job.run
    if run.last_checkpoint.is_file():
        fit, what = [PROGRAM, "fit", "--resume", str(run.path), *extra_fit], "resuming from last.ckpt"
    else:
        for stale in run.path.iterdir():  # a fit killed before its first checkpoint: start afresh
            if stale.name not in (LOCK_FILE, LOG_FILE):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        fit, what = [*job.fit, *extra_fit], "fit"
    progress.say(job, f"{what}{f', output in {run.path / LOG_FILE}' if log else ''}: {shlex.join(fit)}")
    code = execute(fit, log, env)
    if code != 0 and diverged_step(run) is not None:
        return False
    fail_unless_zero(code, fit, job, progress, log)
    if not run.config_file.is_file():
        raise ExperimentFailedError(f"experiment {progress.suite.name}, {job.name}: fit did not log into "
                                    f"{run.path}; do the extra options change trainer.logger?")
    execute_or_fail(evaluation_command(run), job, execute, progress, log, env)
    return True


def execute_or_fail(command: list[str], job: Job, execute: Execute, progress: Progress, log: IO[str] | None,
                    env: dict[str, str]) -> None:
    fail_unless_zero(execute(command, log, env), command, job, progress, log)


def fail_unless_zero(code: int, command: list[str], job: Job, progress: Progress, log: IO[str] | None) -> None:
    if code != 0:
        where = f"in {log.name}" if log else "above"
        raise ExperimentFailedError(f"experiment {progress.suite.name}, {job.name}: {command[1]} ended with "
                                    f"exit code {code} (see its output {where}): {shlex.join(command)}")


def job_resources(jobs: int) -> tuple[list[dict[str, str]], list[str]]:
    """Per job slot: the environment (its own GPU when there are GPUs), and fit options (a share of the CPU cores)."""
    gpus = torch.cuda.device_count()
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(slot % gpus)} for slot in range(jobs)], []
    threads = ["--threads", str(max(1, (os.cpu_count() or 1) // jobs))] if jobs > 1 else []
    return [{} for _ in range(jobs)], threads


def run_suite(suite: Suite, seeds: tuple[int, ...] | None = None, epochs: int | None = None,
              extra: list[str] | None = None, out: Path = TABLES_DIR, dry_run: bool = False, jobs: int = 1,
              execute: Execute = run_cli, test_best_val: bool = False) -> list[Path]:
    """Fit and test every variant once per seed (``jobs`` at a time), then compare them; returns the files
    written (none for a dry run)."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    todo = plan(suite, seeds or suite.seeds, epochs, extra or [])
    folders = [job.run.path for job in todo]
    if dry_run:
        for job in todo:
            print(shlex.join(job.fit))
            print(shlex.join(evaluation_command(job.run)))
            if test_best_val:
                print(f"# then: {shlex.join(evaluation_command(job.run, job.run.checkpoints))}/<the best-val "
                      f"checkpoint that last.ckpt names>")
        print(shlex.join(compare_command(folders, out, suite.name, suite.baseline)))
        return []
    progress = Progress(suite, len(todo))
    environments, extra_fit = job_resources(jobs)
    slots = list(range(jobs))
    slot_lock, failed = threading.Lock(), threading.Event()

    def in_a_slot(job: Job) -> None:
        if failed.is_set():  # a run failed: start no more, let those in flight end
            return
        with slot_lock:
            slot = slots.pop()
        try:
            run_job(job, execute, progress, jobs > 1, environments[slot], extra_fit, test_best_val)
        except BaseException:
            failed.set()
            raise
        finally:
            with slot_lock:
                slots.append(slot)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(in_a_slot, job) for job in todo]
    for future in futures:
        future.result()  # the first failure, once the runs in flight have ended
    paths = compare(folders, out, suite.name, baseline=suite.baseline)
    print(paths[0].read_text())
    print("wrote " + ", ".join(map(str, paths)))
    return paths


def split_fit_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """The tool's own options, and those after ``--`` that go to every fit."""
    return (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROGRAM} experiment", description=__doc__.split("\n")[0],
        epilog="options after -- go to every fit, e.g. -- --config configs/trainer/gpu.yaml")
    parser.add_argument("suite", help="a folder of --configs, e.g. batchnorm, augmentation, optimizer, "
                                      "architecture, pooling")
    parser.add_argument("--seeds", help="a count (3: seeds 0, 1, 2) or a list (0,5,7); "
                                                          "default: the suite's suite.yaml")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time: each gets a GPU, or a share of the "
                                                            "CPU cores")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs of every variant (default: the suite's)")
    parser.add_argument("--test-best-val", action="store_true",
                        help="also test each run's best-validation checkpoint (its own column; last.ckpt's "
                             "test_acc stays the suite's result)")
    parser.add_argument("--configs", type=Path, default=CONFIGS_DIR, help="folder of the suites")
    parser.add_argument("--out", type=Path, default=TABLES_DIR,
                        help=f"folder for <suite>.md/.csv/.png (default: {TABLES_DIR}; 'results' for the "
                             f"committed tables)")
    return parser


def main(argv: list[str]) -> None:
    own, extra = split_fit_options(argv)
    args = parser().parse_args(own)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    run_suite(load_suite(args.suite, args.configs), seeds, args.epochs, extra, args.out, args.dry_run, args.jobs,
              test_best_val=args.test_best_val)
