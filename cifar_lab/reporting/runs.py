"""Read finished runs back: a run folder's TensorBoard scalars (tensorboard's EventAccumulator) and config.

A run folder is ``runs/<backbone>/version_N/`` as written by ``cifar-lab fit``; ``test`` of one of
its checkpoints logs into the same folder (see ``run_folder_of``).
"""

import glob
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tensorboard.backend.event_processing.event_accumulator import (
    SCALARS,
    EventAccumulator,
    ScalarEvent,
)

from cifar_lab.errors import RunNotFoundError

RUNS_DIR = "runs"  # where ``fit`` logs by default, relative to the working folder
CONFIG_FILE = "config.yaml"
EVENTS_GLOB = "events.out.tfevents.*"
GLOB_CHARS = "*?["
HYPERPARAMETER_SECTIONS = ("seed_everything", "model", "data")
TRAINER_HYPERPARAMETERS = ("max_epochs", "precision", "accumulate_grad_batches", "gradient_clip_val")


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
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {tag: accumulator.Scalars(tag) for tag in tags["scalars"]}
    config_path = folder / CONFIG_FILE
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    return Run(folder, scalars, list(tags["images"]), config or {})


def expand(paths: Iterable[str]) -> list[Path]:
    """Run folders from paths and glob patterns (quoted ``runs/*/version_*`` works without a shell)."""
    folders = []
    for path in paths:
        if any(char in path for char in GLOB_CHARS):
            folders.extend(Path(match) for match in sorted(glob.glob(path)) if Path(match).is_dir())
        else:
            folders.append(Path(path))
    return folders


def run_folder_of(ckpt_path: str | Path | None) -> Path | None:
    """The run folder a checkpoint was saved in (``<run>/checkpoints/x.ckpt`` beside ``<run>/config.yaml``)."""
    if not ckpt_path:
        return None
    checkpoints = Path(ckpt_path).resolve().parent
    run = checkpoints.parent
    return run if checkpoints.name == "checkpoints" and (run / CONFIG_FILE).is_file() else None


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
