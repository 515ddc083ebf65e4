"""Compare finished runs: a table row per configuration (mean ± std and intervals over its seeds, and the
difference from a baseline) or per run, and their curves overlaid.

    cifar-lab compare 'runs/*/version_*' --out comparison
    python scripts/compare_runs.py runs/simple_cnn/version_0 runs/resnet18/version_0

Reads each folder's TensorBoard event files and ``config.yaml``; writes ``comparison.md``,
``comparison.csv`` and ``comparison.png`` into ``--out`` (``--name`` names the files otherwise). Folders
without event files are reported on stderr and skipped; metrics a run lacks (``test/acc`` before
``test``) are blank cells.
"""

import argparse
import sys
from pathlib import Path
from statistics import mean
from typing import Any

from cifar_lab.callbacks.non_finite import DIVERGED_TAG
from cifar_lab.data.datamodule import configured_class_count
from cifar_lab.errors import CifarLabError, ConfigError, RunNotFoundError
from cifar_lab.models import create
from cifar_lab.reporting.plots import groups_figure
from cifar_lab.reporting.runs import (
    BEST_VAL_TESTS,
    EVENTS_GLOB,
    Run,
    RunGroup,
    expand,
    experiment_settings,
    flatten,
    group_runs,
    hyperparameters,
    load_run,
)
from cifar_lab.reporting.statistics import Difference, Spread, difference, spread
from cifar_lab.reporting.tables import markdown_table, write_csv
from cifar_lab.tools.robustness import TAG_PREFIX as ROBUSTNESS_PREFIX

COLUMNS = ["run", "backbone", "parameters", "epochs", "best_val_acc", "test_acc", "wall_time_s", "images_per_s"]
# The test accuracy of the best-validation checkpoint, reported beside (never instead of) last.ckpt's.
BEST_VAL_TEST = "test_acc_best_val_ckpt"
# The step where the divergence guard stopped a run; a group counts its diverged runs in a column of this name.
DIVERGED = "diverged_at_step"
# `cifar-lab robustness` of last.ckpt, logged as robustness/<column>: shown when any run has them.
ROBUSTNESS_COLUMNS = ("cifar10_1_acc", "cifar10_1_gap", "corruption_acc", "corruption_ece")
# Per-epoch tags written during fit (not test): the first and last of them bound a run's wall time.
FIT_TAGS = ("hp_metric", "train/loss_epoch", "val/acc")


def parameter_count(config: dict[str, Any]) -> int | None:
    """Trainable parameters of the config's backbone (built here, untrained); None if it cannot be built."""
    model, num_classes = config.get("model") or {}, configured_class_count(config.get("data") or {})
    if num_classes is None:
        return None
    try:
        backbone = create(model.get("backbone", "simple_cnn"), num_classes=num_classes,
                          **(model.get("backbone_kwargs") or {}))
    except CifarLabError:
        return None
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad)


def wall_time(run: Run) -> float | None:
    """Seconds from the first to the last scalar logged while fitting."""
    times = [event.wall_time for tag in FIT_TAGS for event in run.scalars.get(tag, [])]
    return max(times) - min(times) if len(times) > 1 else None


def best_val_test(run: Run) -> float | None:
    """``test/acc`` of the run's best-validation checkpoint, when it was tested (``<run>/best_val/``)."""
    folder = run.folder / BEST_VAL_TESTS
    return load_run(folder).last("test/acc") if any(folder.glob(EVENTS_GLOB)) else None


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
        BEST_VAL_TEST: best_val_test(run),
        "wall_time_s": wall_time(run),
        "images_per_s": mean(images_per_s) if images_per_s else None,
        DIVERGED: run.last(DIVERGED_TAG),
        **{column: run.last(ROBUSTNESS_PREFIX + column) for column in ROBUSTNESS_COLUMNS},
    }


def differing(settings: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The dotted keys whose values are not the same in every one of ``settings``, with their values."""
    keys = sorted({key for params in settings for key in params})
    columns = {key: [params.get(key) for params in settings] for key in keys}
    return {key: values for key, values in columns.items() if len({repr(v) for v in values}) > 1}


def formatted(column: str, value: Any) -> Any:
    """Markdown cell text: accuracies (and their gaps, calibration errors) to 4 places, times and speeds to 1, counts
    with separators."""
    if value is None or isinstance(value, str):
        return value
    if column.endswith(("_acc", "_gap", "_ece")):
        return f"{value:.4f}"
    if column.endswith("_s"):
        return f"{value:.1f}"
    if column == "parameters":
        return f"{value:,}"
    return value


def load_runs(folders: list[Path]) -> list[Run]:
    """The run folders that have event files; the others are named on stderr."""
    runs = []
    for folder in folders:
        try:
            runs.append(load_run(folder))
        except RunNotFoundError as err:
            print(f"cifar-lab compare: skipped {err}", file=sys.stderr)
    if not runs:
        raise RunNotFoundError("no run folders with TensorBoard event files to compare; pass folders such as "
                               "runs/simple_cnn/version_0 or a glob such as 'runs/*/version_*'")
    return runs


def per_run_table(runs: list[Run]) -> tuple[list[str], list[list[Any]], list[list[Any]]]:
    """Header, raw rows (CSV) and formatted rows (Markdown): one row per run."""
    summaries = [summary(run) for run in runs]
    extra = differing([flatten(hyperparameters(run.config)) for run in runs])
    columns = COLUMNS + [column for column in (BEST_VAL_TEST, DIVERGED, *ROBUSTNESS_COLUMNS)
                         if any(row[column] is not None for row in summaries)]
    header = columns + list(extra)
    rows = [[row[c] for c in columns] + [values[i] for values in extra.values()] for i, row in enumerate(summaries)]
    return header, rows, [[formatted(c, v) for c, v in zip(header, row)] for row in rows]


def mean_of(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return mean(known) if known else None


def spread_of(values: list[float | None]) -> Spread | None:
    known = [value for value in values if value is not None]
    return spread(known) if known else None


def spread_cells(result: Spread | None) -> list[str | None]:
    """``mean ± std`` and ``[low, high]`` (only the mean for one run)."""
    if result is None or result.std is None:
        return [None if result is None else f"{result.mean:.4f}", None]
    return [f"{result.mean:.4f} ± {result.std:.4f}", f"[{result.low:.4f}, {result.high:.4f}]"]


def difference_cells(result: Difference | None) -> list[str | None]:
    """``+d [low, high]`` (with ``*`` where the interval excludes 0) and ``p (test)``."""
    if result is None:
        return [None, None]
    mark = " *" if result.excludes_zero else ""
    interval = f"{result.mean:+.4f} [{result.low:+.4f}, {result.high:+.4f}]{mark}"
    return [interval, f"{result.p_value:.3f} ({result.test})"]


def spread_values(result: Spread | None) -> list[float | None]:
    return [None] * 4 if result is None else [result.mean, result.std, result.low, result.high]


def difference_values(result: Difference | None) -> list[Any]:
    return [None] * 5 if result is None else [result.mean, result.low, result.high, result.p_value, result.test]


GROUP_COLUMNS = ["group", "n", "backbone", "parameters", "epochs"]
DIVERGED_COUNT = "diverged"
SPEED_COLUMNS = ["wall_time_s", "images_per_s"]


def group_table(groups: list[RunGroup], baseline: str) -> tuple[list[str], list[str], list[list[Any]], list[list[Any]]]:
    """Markdown header, CSV header, raw rows (CSV) and formatted rows (Markdown): one row per group, with the
    spread of its accuracies and its test accuracy's difference from the ``baseline`` group. A diverged run
    counts in n and in the ``diverged`` column (shown when any run diverged), never in the accuracies."""
    summaries = {group.label: [finished_only(summary(run)) for run in group.runs] for group in groups}
    metrics = ["test_acc", "best_val_acc"] + [column for column in (BEST_VAL_TEST, *ROBUSTNESS_COLUMNS)
                                              if any(row[column] is not None for rows in summaries.values()
                                                     for row in rows)]
    counted = [DIVERGED_COUNT] if any(row[DIVERGED] is not None for rows in summaries.values() for row in rows) else []
    base = next(group for group in groups if group.label == baseline)
    base_test = base.by_seed([row["test_acc"] for row in summaries[baseline]])
    extra = differing([experiment_settings(group.runs[0].config) for group in groups])
    versus = f"test_acc_vs_{baseline}"
    header = [*GROUP_COLUMNS, *counted, *(f"{metric}{part}" for metric in metrics for part in ("", "_ci")),
              *SPEED_COLUMNS, versus, "p_value", *extra]
    csv_header = [*GROUP_COLUMNS, *counted, *(f"{metric}_{part}" for metric in metrics
                                              for part in ("mean", "std", "ci_low", "ci_high")),
                  *SPEED_COLUMNS, versus, f"{versus}_ci_low", f"{versus}_ci_high", "p_value", "test", *extra]
    raw, cells = [], []
    for i, group in enumerate(groups):
        rows = summaries[group.label]
        spreads = [spread_of([row[metric] for row in rows]) for metric in metrics]
        diff = None if group is base else difference(base_test, group.by_seed([row["test_acc"] for row in rows]))
        first = {column: rows[0][column] for column in ("backbone", "parameters", "epochs")}
        common = [group.label, len(rows), *first.values(), *([sum(row[DIVERGED] is not None for row in rows)]
                                                            if counted else [])]
        speed = [mean_of([row[column] for row in rows]) for column in SPEED_COLUMNS]
        settings = [values[i] for values in extra.values()]
        raw.append([*common, *(value for result in spreads for value in spread_values(result)), *speed,
                    *difference_values(diff), *settings])
        cells.append([*(formatted(c, v) for c, v in zip([*GROUP_COLUMNS, *counted], common)),
                      *(cell for result in spreads for cell in spread_cells(result)),
                      *(formatted(c, v) for c, v in zip(SPEED_COLUMNS, speed)), *difference_cells(diff), *settings])
    return header, csv_header, raw, cells


def finished_only(row: dict[str, Any]) -> dict[str, Any]:
    """A diverged run's row with its accuracies blanked: what it reached before its loss went NaN/inf is no result."""
    if row[DIVERGED] is None:
        return row
    return {**row, "test_acc": None, "best_val_acc": None, BEST_VAL_TEST: None}


def notes(grouped: bool, baseline: str | None, diverged: bool, robust: bool) -> str:
    """What each number is: which split and checkpoint, and how sure it is."""
    lines = [("test_acc: test split, each run's last.ckpt (the end of training; no checkpoint is picked by a score); "
              "best_val_acc: validation split, best epoch; test_acc_best_val_ckpt (where tested, e.g. "
              "`cifar-lab experiment --test-best-val`): test split, the checkpoint of that best validation epoch.")]
    if robust:
        lines.append("cifar10_1_acc, corruption_acc, corruption_ece (where measured by `cifar-lab robustness` of "
                     "last.ckpt): accuracy on CIFAR-10.1 v6, mean accuracy (mCA) and mean calibration error over "
                     "CIFAR-10-C's 15 corruptions x 5 severities; cifar10_1_gap: clean test accuracy minus "
                     "CIFAR-10.1's.")
    if grouped:
        lines.append(f"Runs whose configs differ only in the seed form a group: mean ± sample std over its n runs, "
                     f"ci: 95% Student-t interval of the mean. test_acc_vs_{baseline}: mean difference from the "
                     f"baseline with its 95% interval, paired t-test over shared seeds, Welch's t-test otherwise; "
                     f"* marks an interval that excludes 0, otherwise the difference is within the noise.")
    if diverged:
        lines.append("diverged: runs whose training loss turned NaN/inf, stopped by the divergence guard and not "
                     "tested; " + ("they count in n but not in the accuracies, which are over the other runs."
                               if grouped else "diverged_at_step names the step where the loss went bad."))
    if not grouped:
        lines.append("One run per configuration: no spread is known, so a difference cannot be told from the noise "
                     "of another seed (`cifar-lab experiment --seeds` runs several).")
    return "\n".join(lines) + "\n"


def compare(folders: list[Path], out: Path, name: str = "comparison", baseline: str | None = None,
            per_run: bool = False) -> list[Path]:
    """Write ``<name>.md``/``.csv`` (the table) and ``<name>.png`` into ``out`` for the run folders that have
    event files: a row per group of seeds of one configuration (against ``baseline``, default the first group),
    or a row per run when every group has one run or ``per_run`` asks; returns the files."""
    runs = load_runs(folders)
    groups = group_runs(runs)
    labels = [group.label for group in groups]
    if baseline is not None and baseline not in labels:
        raise ConfigError(f"--baseline {baseline!r} is not one of the compared groups {labels}")
    grouped = not per_run and any(len(group.runs) > 1 for group in groups)
    if grouped:
        baseline = baseline or labels[0]
        header, csv_header, rows, cells = group_table(groups, baseline)
    else:
        header, rows, cells = per_run_table(runs)
        csv_header = header
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.png"]
    right = [column for column in header if column not in ("group", "run", "backbone")]
    diverged = any(run.last(DIVERGED_TAG) is not None for run in runs)
    robust = any(run.last(ROBUSTNESS_PREFIX + column) is not None for run in runs for column in ROBUSTNESS_COLUMNS)
    paths[0].write_text(markdown_table(header, cells, right_aligned=right) + "\n"
                        + notes(grouped, baseline, diverged, robust))
    write_csv(paths[1], csv_header, rows)
    groups_figure(groups).savefig(paths[2], dpi=80)
    return paths


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifar-lab compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders or glob patterns such as 'runs/*/version_*'")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="folder for the table and plot")
    parser.add_argument("--name", default="comparison", help="file name (without suffix) of the table and plot")
    parser.add_argument("--baseline", help="the group the others are compared with (default: the first group)")
    parser.add_argument("--per-run", action="store_true", help="one table row per run instead of per group")
    return parser


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    paths = compare(expand(args.runs), args.out, args.name, args.baseline, args.per_run)
    print(paths[0].read_text())
    print("wrote " + ", ".join(map(str, paths)))
