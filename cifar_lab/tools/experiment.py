"""Run a comparison suite of configs/experiments/: fit and test every variant, then compare them.

A suite is ``configs/experiments/<suite>/base.yaml`` plus one small YAML per variant, each differing from the
others in one thing.

    cifar-lab experiment batchnorm              # fit + test every variant, then runs/experiments/batchnorm.md/.csv/.png
    cifar-lab experiment batchnorm --out results  # the same, writing the committed results/ tables
    cifar-lab experiment batchnorm --dry-run    # print the commands (e.g. for a cluster) and run nothing
    python scripts/run_experiment.py augmentation --epochs 2 -- --trainer.limit_train_batches 20

Each variant is ``cifar-lab fit --config base.yaml --config <variant>.yaml [--trainer.max_epochs N] [extra]``,
logging into ``runs/experiments/<suite>/<variant>/version_N``, then ``cifar-lab test`` of that run's
``last.ckpt``; last, ``cifar-lab compare`` of exactly those runs writes the suite's table and plot.
"""

import argparse
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cifar_lab.errors import ConfigError, ExperimentFailedError
from cifar_lab.reporting.runs import RUNS_DIR, RunFolder
from cifar_lab.tools.compare import compare

BASE = "base.yaml"
CONFIGS_DIR = Path("configs") / "experiments"
EXPERIMENT_RUNS = Path(RUNS_DIR) / "experiments"
TABLES_DIR = EXPERIMENT_RUNS  # beside the suites' runs, ignored by git; ``--out results`` for the committed tables
PROGRAM = "cifar-lab"


@dataclass(frozen=True)
class Suite:
    """A base config and its variants (``name -> config file``, in name order)."""

    name: str
    base: Path
    variants: dict[str, Path]


def suite_names(configs: Path) -> list[str]:
    """The suites under ``configs``: folders holding a ``base.yaml``."""
    return sorted(path.parent.name for path in configs.glob(f"*/{BASE}"))


def load_suite(name: str, configs: Path = CONFIGS_DIR) -> Suite:
    folder = configs / name
    if not (folder / BASE).is_file():
        if not configs.is_dir():
            raise ConfigError(f"no experiment configs at {configs}; run from the repository root or pass --configs")
        raise ConfigError(f"unknown experiment {name!r}; choose one of {suite_names(configs)}")
    variants = {path.stem: path for path in sorted(folder.glob("*.yaml")) if path.name != BASE}
    if not variants:
        raise ConfigError(f"{folder} has no variant configs beside {BASE}")
    return Suite(name, folder / BASE, variants)


def fit_command(suite: Suite, variant: str, epochs: int | None, extra: list[str]) -> list[str]:
    """``cifar-lab fit`` of one variant, logging into ``runs/experiments/<suite>/<variant>/``."""
    logger = "--trainer.logger.init_args"
    command = [PROGRAM, "fit", "--config", str(suite.base), "--config", str(suite.variants[variant]),
               f"{logger}.save_dir", str(EXPERIMENT_RUNS / suite.name), f"{logger}.name", variant]
    if epochs is not None:
        command += ["--trainer.max_epochs", str(epochs)]
    return command + extra


def evaluation_command(run: RunFolder) -> list[str]:
    """``cifar-lab test`` of a run's last checkpoint with the run's own config; it logs into the run's folder."""
    return [PROGRAM, "test", "--config", str(run.config_file), "--ckpt_path", str(run.last_checkpoint)]


def compare_command(runs: list[Path], out: Path, name: str) -> list[str]:
    return [PROGRAM, "compare", *map(str, runs), "--out", str(out), "--name", name]


def run_cli(command: list[str]) -> int:
    """Run a ``cifar-lab`` command in a new process of this Python (output goes to the terminal); its exit code."""
    return subprocess.run([sys.executable, "-m", "cifar_lab", *command[1:]]).returncode


def run_suite(suite: Suite, epochs: int | None = None, extra: list[str] | None = None, out: Path = TABLES_DIR,
              dry_run: bool = False, execute: Callable[[list[str]], int] = run_cli) -> list[Path]:
    """Fit and test every variant in turn, then compare them; returns the files written (none for a dry run)."""
    runs = {variant: RunFolder.next_version(EXPERIMENT_RUNS / suite.name, variant) for variant in suite.variants}
    plan = [(variant, command) for variant, run in runs.items()
            for command in (fit_command(suite, variant, epochs, extra or []), evaluation_command(run))]
    if dry_run:
        for _, command in plan:
            print(shlex.join(command))
        print(shlex.join(compare_command([run.path for run in runs.values()], out, suite.name)))
        return []
    for variant, command in plan:
        print(f"{PROGRAM} experiment {suite.name}: {shlex.join(command)}", flush=True)
        code = execute(command)
        if code != 0:
            raise ExperimentFailedError(f"experiment {suite.name}, variant {variant}: {command[1]} ended with exit "
                                        f"code {code} (see its output above): {shlex.join(command)}")
        if command[1] == "fit" and not runs[variant].config_file.is_file():
            raise ExperimentFailedError(f"experiment {suite.name}, variant {variant}: fit did not log into "
                                        f"{runs[variant].path}; do the extra options change trainer.logger?")
    paths = compare([run.path for run in runs.values()], out, suite.name)
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
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs of every variant (default: the suite's)")
    parser.add_argument("--configs", type=Path, default=CONFIGS_DIR, help="folder of the suites")
    parser.add_argument("--out", type=Path, default=TABLES_DIR,
                        help=f"folder for <suite>.md/.csv/.png (default: {TABLES_DIR}; 'results' for the committed tables)")
    return parser


def main(argv: list[str]) -> None:
    own, extra = split_fit_options(argv)
    args = parser().parse_args(own)
    run_suite(load_suite(args.suite, args.configs), args.epochs, extra, args.out, args.dry_run)
