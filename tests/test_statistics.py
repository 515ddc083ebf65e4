"""How sure a comparison is: spreads and differences against hand-computed values, grouping of seeds, and
``compare``'s group table on run folders written here (no training)."""

import csv
import math
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from cifar_lab.cli import main
from cifar_lab.reporting.runs import group_runs, load_run
from cifar_lab.reporting.statistics import Spread, difference, spread
from cifar_lab.tools.compare import compare

T_975_2DF = 4.302652729911275  # Student t quantile for a 95% interval with 2 degrees of freedom


def test_spread_of_three_runs_is_the_mean_the_sample_std_and_the_student_t_interval() -> None:
    result = spread([0.90, 0.92, 0.94])
    assert (result.n, result.mean, result.std) == (3, pytest.approx(0.92), pytest.approx(0.02))
    half_width = T_975_2DF * 0.02 / math.sqrt(3)  # 0.0497
    assert (result.low, result.high) == (pytest.approx(0.92 - half_width), pytest.approx(0.92 + half_width))


def test_one_run_has_a_mean_and_no_spread() -> None:
    assert spread([0.9]) == Spread(n=1, mean=0.9, std=None, low=None, high=None)


def test_difference_over_shared_seeds_is_a_paired_t_test() -> None:
    # Differences 0.01, 0.02, 0.01: mean 1/75, std 0.005774, t = 4 with 2 degrees of freedom.
    result = difference({0: 0.90, 1: 0.92, 2: 0.94}, {0: 0.91, 1: 0.94, 2: 0.95, 7: 0.5})
    assert (result.test, result.n) == ("paired", 3)
    assert result.mean == pytest.approx(0.04 / 3)
    p_value = 2 * (1 - (0.5 + 4 / (2 * math.sqrt(2 + 4**2))))  # closed-form t CDF for 2 degrees of freedom
    assert result.p_value == pytest.approx(p_value)  # 0.0572
    half_width = T_975_2DF * (0.01 / math.sqrt(3)) / math.sqrt(3)
    assert (result.low, result.high) == (pytest.approx(0.04 / 3 - half_width), pytest.approx(0.04 / 3 + half_width))
    assert not result.excludes_zero


def test_difference_without_shared_seeds_is_welchs_test() -> None:
    # Means 0.91 and 0.95, variances 2e-4 and 2e-4: t = 0.04 / sqrt(2e-4/2 + 2e-4/2) = 2.828, 2 degrees of freedom.
    result = difference({0: 0.90, 1: 0.92}, {5: 0.94, 6: 0.96})
    assert (result.test, result.n) == ("welch", 4)
    assert result.mean == pytest.approx(0.04)
    t = 0.04 / math.sqrt(2e-4)
    assert result.p_value == pytest.approx(2 * (1 - (0.5 + t / (2 * math.sqrt(2 + t**2)))))


def test_no_difference_is_claimed_from_one_run_each() -> None:
    assert difference({0: 0.90}, {0: 0.95}) is None
    assert difference({0: 0.90}, {1: 0.95, 2: 0.96}) is None


def write_run(folder: Path, seed: int, lr: float, val_acc: list[float], test_acc: float,
              data_dir: str = "data") -> Path:
    """A run folder as fit and test leave it: config.yaml and TensorBoard scalars, per epoch and at the end."""
    logger = TensorBoardLogger(folder.parent.parent, name=folder.parent.name, version=folder.name)
    for epoch, acc in enumerate(val_acc):
        step = 10 * (epoch + 1) - 1
        logger.log_metrics({"val/acc": acc, "train/loss_epoch": 2.0 - acc, "epoch": epoch}, step=step)
    logger.log_metrics({"test/acc": test_acc}, step=10 * len(val_acc) - 1)
    logger.finalize("success")
    config = {"seed_everything": seed, "model": {"backbone": "simple_cnn", "optimizer": {"init_args": {"lr": lr}}},
              "data": {"data_dir": data_dir, "num_workers": seed % 3}, "trainer": {"max_epochs": len(val_acc)}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_grouping_ignores_seed_data_folder_and_workers_but_not_other_settings(tmp_path: Path) -> None:
    runs = [load_run(write_run(tmp_path / "suite" / variant / f"seed_{seed}", seed, lr, [0.5], 0.5, f"/d{seed}"))
            for variant, lr in (("slow", 0.01), ("fast", 0.1)) for seed in (0, 1)]
    groups = group_runs(runs)
    assert [(group.label, [run.seed for run in group.runs]) for group in groups] == [("slow", [0, 1]),
                                                                                   ("fast", [0, 1])]


def test_a_step_logged_twice_around_a_resume_counts_once(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs" / "simple_cnn" / "version_0", 0, 0.1, [0.4, 0.5], 0.5)
    resumed = TensorBoardLogger(run.parent.parent, name="simple_cnn", version="version_0")  # a second event file
    resumed.log_metrics({"val/acc": 0.55}, step=19)
    resumed.finalize("success")
    assert load_run(run).per_epoch("val/acc") == ([1, 2], pytest.approx([0.4, 0.55]))


SUITE = {  # variant -> (lr, test accuracy by seed)
    "base": (0.01, {0: 0.90, 1: 0.92, 2: 0.94}),
    "better": (0.1, {0: 0.93, 1: 0.95, 2: 0.97}),
}


def test_compare_writes_one_row_per_group_with_spread_and_the_paired_difference(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folders = [write_run(tmp_path / "suite" / variant / f"seed_{seed}", seed, lr, [acc - 0.1, acc], acc)
               for variant, (lr, accuracies) in SUITE.items() for seed, acc in accuracies.items()]
    md, table, _ = compare(folders, tmp_path / "out", "suite", baseline="base")
    with table.open() as file:
        rows = {row["group"]: row for row in csv.DictReader(file)}
    assert list(rows) == ["base", "better"] and rows["base"]["n"] == "3"
    assert float(rows["base"]["test_acc_mean"]) == pytest.approx(0.92)
    assert float(rows["base"]["test_acc_std"]) == pytest.approx(0.02)
    assert float(rows["base"]["test_acc_ci_high"]) == pytest.approx(0.92 + T_975_2DF * 0.02 / math.sqrt(3))
    assert float(rows["better"]["test_acc_vs_base"]) == pytest.approx(0.03)
    assert rows["better"]["test"] == "paired" and rows["base"]["test_acc_vs_base"] == ""
    assert rows["better"]["model.optimizer.init_args.lr"] == "0.1"  # the setting that tells the groups apart
    text = md.read_text()
    # A constant difference of 0.03 over three seeds: zero spread, so the interval excludes 0 and is marked.
    assert "| better |" in text and "0.9500 ± 0.0200" in text and "+0.0300 [+0.0300, +0.0300] *" in text
    assert "paired t-test over shared seeds" in text and "test split" in text

    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    main(["compare", *map(str, folders), "--out", str(tmp_path / "runs_table"), "--per-run"])
    with (tmp_path / "runs_table" / "comparison.csv").open() as file:
        assert [row["run"] for row in csv.DictReader(file)] == [f"{v}/seed_{s}" for v in SUITE for s in range(3)]
    capsys.readouterr()


def test_one_run_per_configuration_keeps_the_run_table_and_says_no_spread_is_known(tmp_path: Path) -> None:
    folders = [write_run(tmp_path / "runs" / name / "version_0", 0, lr, [0.5], acc)
               for name, lr, acc in (("a", 0.01, 0.5), ("b", 0.1, 0.6))]
    md, *_ = compare(folders, tmp_path / "out")
    assert md.read_text().startswith("| run ") and "no spread is known" in md.read_text()


def test_a_baseline_that_is_not_a_group_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_run(tmp_path / "suite" / "base" / "seed_0", 0, 0.01, [0.5], 0.5)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    with pytest.raises(SystemExit):
        main(["compare", str(folder), "--baseline", "nope", "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err == "cifar-lab: error: --baseline 'nope' is not one of the compared groups ['base']\n"
