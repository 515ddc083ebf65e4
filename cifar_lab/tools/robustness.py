"""Evaluate a CIFAR-10 checkpoint on new photos of its classes (CIFAR-10.1) and on corrupted test images (CIFAR-10-C).

CIFAR-10.1 v6 holds 2,000 photos collected the way CIFAR-10's were; CIFAR-10-C the test split under 19 corruptions
at 5 severities. Together with the clean test split they show how much of a test accuracy carries over.

    cifar-lab robustness --ckpt_path runs/simple_cnn/version_0/checkpoints/last.ckpt --download
    cifar-lab robustness --ckpt_path RUN/checkpoints/last.ckpt --sets cifar10_c --corruptions benchmark --severities 5

Prints the tables and writes ``robustness.md``, ``robustness.csv`` (a row per set) and ``robustness_corruptions.csv``
(corruption x severity) where ``cifar-lab test`` would log the checkpoint (``--out`` otherwise), and logs the
``robustness/*`` scalars into the run's TensorBoard. docs/robustness.md describes the sets and the columns.
"""

import argparse
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any, get_args, get_type_hints

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchmetrics.functional.classification import multiclass_accuracy

from cifar_lab.checkpoint_io import load_checkpoint_file
from cifar_lab.data import ImageDataModule
from cifar_lab.data import robustness_sets as sets
from cifar_lab.data.augment import ChannelStats
from cifar_lab.data.device_loader import normalize
from cifar_lab.errors import ConfigError
from cifar_lab.module import ImageClassifier, load_classifier
from cifar_lab.reporting.calibration import calibration_error
from cifar_lab.reporting.runs import RunFolder
from cifar_lab.reporting.tables import markdown_table, write_csv

TAG_PREFIX = "robustness/"
SETS = ("cifar10_1", "cifar10_c")
CORRUPTION_GROUPS = {"benchmark": sets.BENCHMARK_CORRUPTIONS, "extra": sets.EXTRA_CORRUPTIONS}
CORRUPTIONS = (*sets.BENCHMARK_CORRUPTIONS, *sets.EXTRA_CORRUPTIONS)
GROUP_TAGS = {"benchmark": "corruption", "extra": "extra_corruption"}  # robustness/<tag>_acc of a group's mean
TTA_CHOICES = get_args(get_type_hints(ImageClassifier.__init__)["tta"])  # the module's own choices
TABLE_FILE, SETS_CSV, CORRUPTIONS_CSV = "robustness.md", "robustness.csv", "robustness_corruptions.csv"
DEFAULT_OUT = Path("robustness")  # for a checkpoint outside a run folder
# The batches are slices of an array in memory or memory-mapped: loader workers would only copy them.
FEW_WORKERS = "The 'predict_dataloader' does not have many workers"


@dataclass(frozen=True)
class Score:
    """Top-1 accuracy and expected calibration error of the model on one set of images."""

    accuracy: float
    ece: float
    images: int


@dataclass(frozen=True)
class Robustness:
    """Every score of one checkpoint; the sets left out are None or absent."""

    clean: Score
    cifar10_1: Score | None
    corrupted: dict[str, dict[int, Score]]  # corruption -> severity -> score
    severities: tuple[int, ...]

    @property
    def gap(self) -> float | None:
        """Clean test accuracy minus CIFAR-10.1's: how much of it does not carry over to new photos."""
        return None if self.cifar10_1 is None else self.clean.accuracy - self.cifar10_1.accuracy

    def cells(self, corruptions: tuple[str, ...]) -> list[Score]:
        """The scores of every evaluated (corruption, severity) of ``corruptions``."""
        return [score for name in corruptions for score in self.corrupted.get(name, {}).values()]

    def covers(self, corruptions: tuple[str, ...]) -> bool:
        """Whether every one of ``corruptions`` was evaluated at all five severities: a mean of fewer cells is
        shown in the tables but never logged under the benchmark's name."""
        return self.severities == sets.SEVERITIES and all(name in self.corrupted for name in corruptions)


def mean_score(cells: list[Score]) -> Score:
    """The mean accuracy and ECE of several scores (each counts once, whatever its size), and their images."""
    return Score(mean(cell.accuracy for cell in cells), mean(cell.ece for cell in cells),
                 sum(cell.images for cell in cells))


class ArrayBatches(Dataset):
    """Item ``i`` is the ``i``-th batch of a set's uint8 NHWC images, normalised as the DataModule normalises them,
    with its labels: a memory-mapped file is read one batch at a time."""

    def __init__(self, images: sets.ImageSet, batch_size: int, stats: ChannelStats) -> None:
        self.images, self.batch_size, self.stats = images, batch_size, stats

    def __len__(self) -> int:
        return math.ceil(len(self.images.labels) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        batch = torch.from_numpy(np.array(self.images.images[part])).permute(0, 3, 1, 2).contiguous()
        return normalize(batch, self.stats), torch.from_numpy(np.array(self.images.labels[part]))


def score(probs: Tensor, labels: Tensor) -> Score:
    """Accuracy and ECE (``reporting.calibration``'s, as ``test/ece``) of softmax probabilities."""
    num_classes = probs.shape[1]
    ece = calibration_error(num_classes)
    ece.update(probs, labels)
    accuracy = multiclass_accuracy(probs, labels, num_classes, average="micro")
    return Score(accuracy.item(), ece.compute().item(), len(labels))


def scores(trainer: L.Trainer, model: ImageClassifier, parts: list[sets.ImageSet], batch_size: int) -> list[Score]:
    """The model's score on each of ``parts``, from one ``trainer.predict`` over all of them (softmax
    probabilities of ``predict_step``, with the model's test-time augmentation)."""
    batches = ConcatDataset([ArrayBatches(part, batch_size, model.input_stats) for part in parts])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", FEW_WORKERS)
        probs = torch.cat(trainer.predict(model, dataloaders=DataLoader(batches, batch_size=None))).float().cpu()
    return [score(part_probs, torch.from_numpy(np.array(part.labels)))
            for part_probs, part in zip(probs.split([len(part.labels) for part in parts]), parts)]


def evaluate(trainer: L.Trainer, model: ImageClassifier, clean: sets.ImageSet, cifar10_1: sets.ImageSet | None,
             corrupted: sets.CorruptedImages | None, severities: tuple[int, ...], batch_size: int) -> Robustness:
    """Score every set, printing a line per set (per corruption for CIFAR-10-C) as it is done."""
    def timed(title: str, parts: list[sets.ImageSet]) -> list[Score]:
        start = time.monotonic()
        results = scores(trainer, model, parts, batch_size)
        accuracies = " ".join(f"{result.accuracy:.4f}" for result in results)
        total = mean_score(results)
        print(f"{title}: accuracy {accuracies}, ECE {total.ece:.4f} ({total.images:,} images, "
              f"{time.monotonic() - start:.1f} s)", flush=True)
        return results

    clean_score = timed("CIFAR-10 test", [clean])[0]
    cifar10_1_score = None if cifar10_1 is None else timed("CIFAR-10.1 v6", [cifar10_1])[0]
    by_corruption = {}
    names = list(corrupted.files) if corrupted is not None else []
    for number, name in enumerate(names, start=1):
        title = f"CIFAR-10-C {number}/{len(names)} {name}, severity {' '.join(map(str, severities))}"
        results = timed(title, [corrupted.severity(name, severity) for severity in severities])
        by_corruption[name] = dict(zip(severities, results))
    return Robustness(clean_score, cifar10_1_score, by_corruption, severities)


def scalars(result: Robustness) -> dict[str, float]:
    """The TensorBoard scalars: every score, the gap, and the means that cover a whole group at five severities."""
    values = {"clean_acc": result.clean.accuracy, "clean_ece": result.clean.ece}
    if result.cifar10_1 is not None:
        values |= {"cifar10_1_acc": result.cifar10_1.accuracy, "cifar10_1_ece": result.cifar10_1.ece,
                   "cifar10_1_gap": result.gap}
    for name, by_severity in result.corrupted.items():
        for severity, cell in by_severity.items():
            values |= {f"{name}_s{severity}_acc": cell.accuracy, f"{name}_s{severity}_ece": cell.ece}
    means = {name: (name,) for name in result.corrupted} | {GROUP_TAGS[group]: names
                                                               for group, names in CORRUPTION_GROUPS.items()}
    for tag, names in means.items():
        if result.covers(names):
            total = mean_score(result.cells(names))
            values |= {f"{tag}_acc": total.accuracy, f"{tag}_ece": total.ece}
    return {TAG_PREFIX + key: value for key, value in values.items()}


def sets_table(result: Robustness) -> tuple[list[str], list[list[Any]]]:
    """Header and raw rows of the table of sets: clean, CIFAR-10.1 and the gap, the mean of each corruption group."""
    rows = [["CIFAR-10 test", result.clean.images, result.clean.accuracy, result.clean.ece]]
    if result.cifar10_1 is not None:
        rows += [["CIFAR-10.1 v6", result.cifar10_1.images, result.cifar10_1.accuracy, result.cifar10_1.ece],
                 ["gap: CIFAR-10 test - CIFAR-10.1", None, result.gap, None]]
    for group, names in CORRUPTION_GROUPS.items():
        cells = result.cells(names)
        if cells:
            evaluated = sum(name in result.corrupted for name in names)
            name = "mCA" if group == "benchmark" and result.covers(names) else "mean"
            total = mean_score(cells)
            rows.append([f"CIFAR-10-C {group} {name}: {evaluated} corruptions x {len(result.severities)} severities",
                         total.images, total.accuracy, total.ece])
    return ["set", "images", "accuracy", "ece"], rows


def corruptions_table(result: Robustness) -> tuple[list[str], list[list[Any]]]:
    """Header and raw rows of the corruption x severity accuracies, each with its mean and mean ECE; after each
    group its mean per severity (the benchmark's over all five severities is the mCA)."""
    header = ["corruption", *(f"s{severity}" for severity in result.severities), "mean", "ece"]
    rows = []
    for group, names in CORRUPTION_GROUPS.items():
        evaluated = [name for name in names if name in result.corrupted]
        for name in evaluated:
            cells = list(result.corrupted[name].values())
            total = mean_score(cells)
            rows.append([name, *(cell.accuracy for cell in cells), total.accuracy, total.ece])
        if evaluated:
            by_severity = [mean(result.corrupted[name][severity].accuracy for name in evaluated)
                           for severity in result.severities]
            total = mean_score(result.cells(names))
            rows.append([f"mean: {group}", *by_severity, total.accuracy, total.ece])
    return header, rows


def formatted(rows: list[list[Any]]) -> list[list[Any]]:
    """Markdown cells: scores to 4 places, image counts with separators."""
    return [[f"{cell:.4f}" if isinstance(cell, float) else f"{cell:,}" if isinstance(cell, int) else cell
             for cell in row] for row in rows]


def report(result: Robustness, ckpt_path: Path, tta: str) -> str:
    """The Markdown page: both tables and what their numbers are."""
    header, rows = sets_table(result)
    text = f"# Robustness of {ckpt_path}\n\n" + markdown_table(header, formatted(rows), right_aligned=header[1:])
    if result.corrupted:
        header, rows = corruptions_table(result)
        text += "\n" + markdown_table(header, formatted(rows), right_aligned=header[1:])
    return text + (
        f"\nTop-1 accuracy and expected calibration error (15 equal-width confidence bins) of the model with "
        f"test-time augmentation {tta!r}. CIFAR-10-C: sN is severity N; mean and ece are over a row's severities; "
        f"the mCA is the mean accuracy over the 15 benchmark corruptions x 5 severities (the 4 extra corruptions "
        f"are not in it). See docs/robustness.md.\n"
    )


def log_scalars(run: RunFolder, ckpt_path: Path, values: dict[str, float]) -> Path:
    """Log into the run as ``cifar-lab test`` does (``last.ckpt`` into the run itself, another checkpoint into its
    sub-folder), at the checkpoint's training step; returns the folder logged into."""
    logger = TensorBoardLogger(**run.logger_location(), sub_dir=run.test_folder(ckpt_path), default_hp_metric=False)
    logger.log_metrics(values, step=load_checkpoint_file(ckpt_path).get("global_step", 0))
    logger.finalize("success")
    return Path(logger.log_dir)


def chosen_corruptions(names: list[str]) -> list[str]:
    """Corruption and group names (``benchmark``, ``extra``) as corruption names, each once, in the release's order."""
    wanted = {corruption for name in names for corruption in CORRUPTION_GROUPS.get(name, (name,))}
    return [corruption for corruption in CORRUPTIONS if corruption in wanted]


def robustness(ckpt_path: Path, data_dir: str | None = None, chosen: tuple[str, ...] = SETS,
               corruptions: list[str] | None = None, severities: tuple[int, ...] = sets.SEVERITIES,
               download: bool = False, out: Path | None = None, tta: str | None = None, batch_size: int = 500,
               accelerator: str = "auto", precision: str = "32-true") -> list[Path]:
    """Evaluate ``ckpt_path`` on its clean test split and the ``chosen`` sets, write the tables and log the scalars
    into its run; returns the files written. Every set is found and checked before the first image is evaluated."""
    model = load_classifier(ckpt_path)
    dataset = model.data_hparams.get("dataset") or "cifar10"
    if dataset != "cifar10":
        raise ConfigError(f"{ckpt_path} was trained on {dataset}; CIFAR-10.1 and CIFAR-10-C hold CIFAR-10's "
                          f"classes only, so robustness evaluates CIFAR-10 checkpoints only")
    run = RunFolder.of_checkpoint(ckpt_path)
    model.tta = tta or ((run.config.get("model") or {}).get("tta") if run else None) or "none"
    data = ImageDataModule.for_evaluation(model.data_hparams, data_dir)
    test = data.datasets["test"]
    clean = sets.ImageSet(test.images.permute(0, 2, 3, 1).numpy(), test.labels.numpy())
    cifar10_1 = sets.cifar10_1(data.data_dir, download) if "cifar10_1" in chosen else None
    corrupted = (sets.cifar10_c(data.data_dir, chosen_corruptions(corruptions or list(CORRUPTION_GROUPS)), download)
                 if "cifar10_c" in chosen else None)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        inference_mode=True)
    result = evaluate(trainer, model, clean, cifar10_1, corrupted, tuple(sorted(set(severities))), batch_size)
    if run is None:
        print(f"{ckpt_path} is not in a run folder (<run>/checkpoints/ beside <run>/config.yaml): "
              f"no TensorBoard to log into")
        folder = out or DEFAULT_OUT
    else:
        logged = log_scalars(run, ckpt_path, scalars(result))
        print(f"logged {TAG_PREFIX}* scalars into {logged}")
        folder = out or logged
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TABLE_FILE).write_text(report(result, ckpt_path, model.tta))
    write_csv(folder / SETS_CSV, *sets_table(result))
    written = [folder / TABLE_FILE, folder / SETS_CSV]
    if result.corrupted:
        write_csv(folder / CORRUPTIONS_CSV, *corruptions_table(result))
        written.append(folder / CORRUPTIONS_CSV)
    return written


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifar-lab robustness", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="a CIFAR-10 checkpoint written by cifar-lab fit")
    parser.add_argument("--data_dir", help="folder with cifar10.npz, CIFAR-10.1/ and CIFAR-10-C/ (default: the "
                                           "checkpoint's data.data_dir, else $CIFAR_LAB_DATA or ./data)")
    parser.add_argument("--download", action="store_true",
                        help="fetch CIFAR-10.1 (GitHub) and CIFAR-10-C (Zenodo, 2.9 GB) when they are not there")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS),
                        help="the sets besides the clean test split (default: both)")
    parser.add_argument("--corruptions", nargs="+", choices=[*CORRUPTION_GROUPS, *CORRUPTIONS],
                        default=list(CORRUPTION_GROUPS), metavar="CORRUPTION",
                        help="CIFAR-10-C corruptions (frost, fog...), or the groups 'benchmark' (the 15 of the mCA) "
                             "and 'extra' (the other 4) (default: both groups)")
    parser.add_argument("--severities", nargs="+", type=int, choices=sets.SEVERITIES, default=list(sets.SEVERITIES),
                        help="CIFAR-10-C severities (default: 1 to 5)")
    parser.add_argument("--tta", choices=TTA_CHOICES,
                        help="test-time augmentation (default: the run's model.tta, else none)")
    parser.add_argument("--batch_size", type=int, default=500, help="images per forward pass")
    parser.add_argument("--accelerator", default="auto", help="Lightning's accelerator: auto, cpu, gpu, mps...")
    parser.add_argument("--precision", default="32-true", help="Lightning's precision, e.g. 32-true or bf16-mixed")
    parser.add_argument("--out", type=Path, help="folder for the tables (default: the folder the scalars are "
                                                 f"logged into, or ./{DEFAULT_OUT} outside a run)")
    return parser


def main(argv: list[str]) -> None:
    tool = parser()
    args = tool.parse_args(argv)
    if args.batch_size < 1:
        tool.error("--batch_size must be at least 1")
    written = robustness(args.ckpt_path, args.data_dir, tuple(args.sets), args.corruptions, tuple(args.severities),
                         args.download, args.out, args.tta, args.batch_size, args.accelerator, args.precision)
    print(written[0].read_text())
    print("wrote " + ", ".join(map(str, written)))
