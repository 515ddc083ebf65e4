"""Compare finished runs: one table row per run folder and their curves overlaid.

    cifar-lab compare 'runs/*/version_*' --out comparison
    python scripts/compare_runs.py runs/simple_cnn/version_0 runs/resnet18/version_0

Reads each folder's TensorBoard event files and ``config.yaml``; writes ``comparison.md``,
``comparison.csv`` and ``comparison.png`` into ``--out`` (``--name`` names the files otherwise). Folders without event files are reported
on stderr and skipped; metrics a run lacks (``test/acc`` before ``test``) are blank cells.
"""

import argparse
import sys
from pathlib import Path
from statistics import mean
from typing import Any

from cifar_lab.data import CIFAR10DataModule
from cifar_lab.errors import CifarLabError, RunNotFoundError
from cifar_lab.models import create
from cifar_lab.reporting.plots import runs_figure
from cifar_lab.reporting.runs import Run, expand, flatten, hyperparameters, load_run
from cifar_lab.reporting.tables import markdown_table, write_csv

COLUMNS = ["run", "backbone", "parameters", "epochs", "best_val_acc", "test_acc", "wall_time_s", "images_per_s"]
# Per-epoch tags written during fit (not test): the first and last of them bound a run's wall time.
FIT_TAGS = ("hp_metric", "train/loss_epoch", "val/acc")


def parameter_count(config: dict[str, Any]) -> int | None:
    """Trainable parameters of the config's backbone (built here, untrained); None if it cannot be built."""
    model = config.get("model") or {}
    try:
        backbone = create(model.get("backbone", "simple_cnn"), num_classes=CIFAR10DataModule.num_classes,
                          **(model.get("backbone_kwargs") or {}))
    except CifarLabError:
        return None
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad)


def wall_time(run: Run) -> float | None:
    """Seconds from the first to the last scalar logged while fitting."""
    times = [event.wall_time for tag in FIT_TAGS for event in run.scalars.get(tag, [])]
    return max(times) - min(times) if len(times) > 1 else None


def summary(run: Run) -> dict[str, Any]:
    """The table row of one run; None where the run has no such metric."""
    val_acc, images_per_s = run.values("val/acc"), run.values("train/images_per_s")
    return {
        "run": run.label,
        "backbone": (run.config.get("model") or {}).get("backbone"),
        "parameters": parameter_count(run.config),
        "epochs": len(run.values("train/loss_epoch")) or None,
        "best_val_acc": max(val_acc) if val_acc else None,
        "test_acc": run.last("test/acc"),
        "wall_time_s": wall_time(run),
        "images_per_s": mean(images_per_s) if images_per_s else None,
    }


def differing_hyperparameters(runs: list[Run]) -> dict[str, list[Any]]:
    """Dotted config keys (seed, model, data, training length) whose values are not the same in every run."""
    flat = [flatten(hyperparameters(run.config)) for run in runs]
    keys = sorted({key for params in flat for key in params})
    columns = {key: [params.get(key) for params in flat] for key in keys}
    return {key: values for key, values in columns.items() if len({repr(v) for v in values}) > 1}


def formatted(column: str, value: Any) -> Any:
    """Markdown cell text: accuracies to 4 places, times and speeds to 1, counts with separators."""
    if value is None or isinstance(value, str):
        return value
    if column.endswith("_acc"):
        return f"{value:.4f}"
    if column.endswith("_s"):
        return f"{value:.1f}"
    if column == "parameters":
        return f"{value:,}"
    return value


def compare(folders: list[Path], out: Path, name: str = "comparison") -> list[Path]:
    """Write ``<name>.md``/``.csv`` (the table) and ``<name>.png`` into ``out`` for the run folders that have
    event files; returns the files."""
    runs = []
    for folder in folders:
        try:
            runs.append(load_run(folder))
        except RunNotFoundError as err:
            print(f"cifar-lab compare: skipped {err}", file=sys.stderr)
    if not runs:
        raise RunNotFoundError("no run folders with TensorBoard event files to compare; pass folders such as "
                               "runs/simple_cnn/version_0 or a glob such as 'runs/*/version_*'")
    summaries = [summary(run) for run in runs]
    extra = differing_hyperparameters(runs)
    header = COLUMNS + list(extra)
    rows = [[row[c] for c in COLUMNS] + [values[i] for values in extra.values()] for i, row in enumerate(summaries)]
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.png"]
    paths[0].write_text(markdown_table(header, [[formatted(c, v) for c, v in zip(header, row)] for row in rows]))
    write_csv(paths[1], header, rows)
    runs_figure(runs).savefig(paths[2], dpi=80)
    return paths


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifar-lab compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders or glob patterns such as 'runs/*/version_*'")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="folder for the table and plot")
    parser.add_argument("--name", default="comparison", help="file name (without suffix) of the table and plot")
    return parser


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    paths = compare(expand(args.runs), args.out, args.name)
    print(paths[0].read_text())
    print("wrote " + ", ".join(map(str, paths)))
