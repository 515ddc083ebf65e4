"""Run folders: where ``fit`` writes a run (``RunFolder``) and reading finished runs back (``load_run``:
TensorBoard scalars through tensorboard's EventAccumulator, and the saved config).

A run folder is ``<save_dir>/<name>/<version>/`` (``runs/<backbone>/version_N/`` by default) holding
``config.yaml``, the TensorBoard event files and ``checkpoints/``. ``test`` of its ``last.ckpt`` logs into
the same folder, so a run's ``test/acc`` is always its last checkpoint's; ``test`` of its best-validation
checkpoint logs into ``best_val/`` inside it, and of any other of its checkpoints into ``tests/<name>/``.
"""

import glob
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from tensorboard.backend.event_processing.event_accumulator import (
    SCALARS,
    EventAccumulator,
    ScalarEvent,
)

from cifar_lab.checkpoint_io import load_checkpoint_file
from cifar_lab.errors import RunNotFoundError

EVENT_READER_LOGGER = "tensorboard"
RUNS_DIR = "runs"  # where ``fit`` logs by default, relative to the working folder
CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_VAL_TESTS = "best_val"  # sub-folder of a run holding the test of its best-validation checkpoint
OTHER_TESTS = "tests"  # sub-folder of a run holding tests of its other checkpoints, one folder each
EVENTS_GLOB = "events.out.tfevents.*"
GLOB_CHARS = "*?["
HYPERPARAMETER_SECTIONS = ("seed_everything", "model", "data")
# Settings that change where or how fast a run goes, not its result: runs differing only in these (and the
# seed) repeat one experiment.
NOT_RESULT_SETTINGS = ("seed_everything", "data.data_dir", "data.download", "data.num_workers", "data.pin_memory",
                       "data.predict_path")
TRAINER_HYPERPARAMETERS = ("max_epochs", "precision", "accumulate_grad_batches", "gradient_clip_val")


@contextmanager
def quiet(logger_name: str) -> Iterator[None]:
    """Only errors from ``logger_name`` while the block runs."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class RunFolder:
    """The layout of one run folder, and the logger settings that make a ``fit`` or ``test`` write into it."""

    path: Path

    @classmethod
    def of_checkpoint(cls, ckpt_path: str | Path | None) -> "RunFolder | None":
        """The run a checkpoint was saved in (``<run>/checkpoints/x.ckpt`` beside ``<run>/config.yaml``)."""
        if not ckpt_path:
            return None
        checkpoints = Path(ckpt_path).resolve().parent
        run = cls(checkpoints.parent)
        return run if checkpoints.name == CHECKPOINTS_DIR and run.config_file.is_file() else None

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @cached_property
    def config(self) -> dict[str, Any]:
        """The saved ``config.yaml`` (empty when missing)."""
        return (yaml.safe_load(self.config_file.read_text()) or {}) if self.config_file.is_file() else {}

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``, or the ``checkpoint.dirpath`` the run's config chose."""
        dirpath = (self.config.get("checkpoint") or {}).get("dirpath")
        return Path(dirpath) if dirpath else self.path / CHECKPOINTS_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def best_val_checkpoint(self) -> Path | None:
        """The checkpoint ModelCheckpoint kept as the best on its monitored metric, as ``last.ckpt`` records
        it (None without ``last.ckpt`` or a monitored metric)."""
        if not self.last_checkpoint.is_file():
            return None
        states = load_checkpoint_file(self.last_checkpoint).get("callbacks") or {}
        best = [state.get("best_model_path") for key, state in states.items() if key.startswith("ModelCheckpoint")]
        return next((self.checkpoints / Path(path).name for path in best if path), None)

    def test_folder(self, ckpt_path: str | Path) -> str | None:
        """Where a test of ``ckpt_path`` logs inside this run: None (the run itself) for ``last.ckpt``,
        ``best_val`` for the best-validation checkpoint, ``tests/<name>`` for another."""
        ckpt_path = Path(ckpt_path).resolve()
        if ckpt_path == self.last_checkpoint.resolve():
            return None
        best = self.best_val_checkpoint
        return BEST_VAL_TESTS if best is not None and best.resolve() == ckpt_path else f"{OTHER_TESTS}/{ckpt_path.stem}"

    @property
    def saved_logger_dir(self) -> str | None:
        """The TensorBoard ``save_dir`` in the saved config, as written there."""
        logger = (self.config.get("trainer") or {}).get("logger") or {}
        return (logger.get("init_args") or {}).get("save_dir") if isinstance(logger, dict) else None

    def logger_location(self) -> dict[str, str]:
        """TensorBoardLogger ``save_dir``/``name``/``version`` that lead into this folder.

        The saved ``save_dir`` is kept when it still leads here (a run continued from the folder it
        started in), so ModelCheckpoint recognises its own folder and keeps its best-k bookkeeping.
        """
        saved = self.saved_logger_dir
        in_place = saved is not None and Path(saved).resolve() == self.path.resolve().parent.parent
        return {"save_dir": saved if in_place else str(self.path.parent.parent), "name": self.path.parent.name,
                "version": self.path.name}


@dataclass
class Run:
    """One run folder: every scalar event by tag, and its ``config.yaml`` (empty when missing)."""

    folder: Path
    scalars: dict[str, list[ScalarEvent]]
    images: list[str]
    config: dict[str, Any]

    @property
    def label(self) -> str:
        """``<name>/version_N``, short and unique within one ``runs/`` folder."""
        return f"{self.folder.parent.name}/{self.folder.name}"

    def values(self, tag: str) -> list[float]:
        return [event.value for event in self.scalars.get(tag, [])]

    def last(self, tag: str) -> float | None:
        values = self.values(tag)
        return values[-1] if values else None

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed_everything")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    def per_epoch(self, tag: str) -> tuple[list[int], list[float]]:
        """(1-based epochs, values) of a once-per-epoch tag, the epoch read from Lightning's ``epoch`` scalar."""
        epoch_at_step = {event.step: int(event.value) for event in self.scalars.get("epoch", [])}
        events = self.scalars.get(tag, [])
        epochs = [epoch_at_step.get(event.step, i) + 1 for i, event in enumerate(events)]
        return epochs, [event.value for event in events]


def load_run(folder: Path) -> Run:
    """Every scalar of every event file in ``folder`` (in the order written) and its config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunNotFoundError(f"{folder}: no such run folder")
    if not list(folder.glob(EVENTS_GLOB)):
        raise RunNotFoundError(f"{folder}: no TensorBoard event files ({EVENTS_GLOB}); is it a run folder?")
    accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
    with quiet(EVENT_READER_LOGGER):  # it warns that fit and test each logged a model graph there
        accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {tag: once_per_step(accumulator.Scalars(tag)) for tag in tags["scalars"]}
    return Run(folder, scalars, list(tags["images"]), RunFolder(folder).config)


def once_per_step(events: list[ScalarEvent]) -> list[ScalarEvent]:
    """One event per step, the last written: a step logged twice around a resume counts once."""
    return sorted({event.step: event for event in events}.values(), key=lambda event: event.step)


def expand(paths: Iterable[str]) -> list[Path]:
    """Run folders from paths and glob patterns (quoted ``runs/*/version_*`` works without a shell)."""
    folders = []
    for path in paths:
        if any(char in path for char in GLOB_CHARS):
            folders.extend(Path(match) for match in sorted(glob.glob(path)) if Path(match).is_dir())
        else:
            folders.append(Path(path))
    return folders


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a run config that change results: seed, model, data and the length/precision of training."""
    selected = {key: config[key] for key in HYPERPARAMETER_SECTIONS if key in config}
    trainer = config.get("trainer") or {}
    selected["trainer"] = {key: trainer[key] for key in TRAINER_HYPERPARAMETERS if key in trainer}
    return selected


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys (``model.optimizer.init_args.lr``)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class RunGroup:
    """Runs of one experiment: their configs differ at most in the seed and in ``NOT_RESULT_SETTINGS``."""

    label: str
    runs: list[Run]

    def by_seed(self, values: list[float | None]) -> dict[int, float]:
        """``values`` (one per run) keyed by each run's seed, for runs that have both."""
        return {run.seed: value for run, value in zip(self.runs, values) if run.seed is not None and value is not None}


def experiment_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted settings that decide a run's result (``hyperparameters`` without ``NOT_RESULT_SETTINGS``)."""
    return {key: value for key, value in flatten(hyperparameters(config)).items() if key not in NOT_RESULT_SETTINGS}


def group_runs(runs: list[Run]) -> list[RunGroup]:
    """Runs grouped by ``experiment_settings``, in the order of their first run; each group is labelled by its
    runs' common parent folder (the variant in ``<suite>/<variant>/seed_<s>``) when that tells groups apart."""
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(repr(sorted(experiment_settings(run.config).items())), []).append(run)
    parents = [{run.folder.parent.name for run in members} for members in grouped.values()]
    by_parent = all(len(names) == 1 for names in parents) and len({next(iter(n)) for n in parents}) == len(parents)
    return [RunGroup(next(iter(names)) if by_parent else members[0].label, members)
            for names, members in zip(parents, grouped.values())]
