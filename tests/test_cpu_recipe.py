"""Laptop mode: the ``threads`` knob and the benchmark's ``cpu-recipe`` section on tiny data."""

import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cifar_lab.cli import build_cli, main
from cifar_lab.precision import automatic_precision
from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_threads_from_the_config_are_applied_before_the_model_is_built(npz_dir: Path, tmp_path: Path,
                                                                       restore_threads: int) -> None:
    wanted = 1 if restore_threads != 1 else 2
    cli = build_cli(["--threads", str(wanted), "--data.data_dir", str(npz_dir), "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert torch.get_num_threads() == wanted
    assert cli.config.threads == wanted


def test_threads_left_null_keep_torchs_default(npz_dir: Path, tmp_path: Path, restore_threads: int) -> None:
    build_cli(["--data.data_dir", str(npz_dir), "--trainer.logger", "false"], run=False)
    assert torch.get_num_threads() == restore_threads


def test_zero_threads_is_a_one_line_error(npz_dir: Path, restore_threads: int,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--threads", "0", "--data.data_dir", str(npz_dir)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == ("cifar-lab: error: threads must be >= 1 (or null for torch's "
                                               "default), got 0")


def test_benchmark_cpu_recipe_section_times_the_tutorial_and_both_recipes_to_each_accuracy(npz_dir: Path,
                                                                                           tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--device", "cpu", "--quick", "--sections",
         "cpu-recipe", "--workers", "0", "--data-dir", str(npz_dir), "--out", str(tmp_path), "--seeds", "1",
         "--evals-per-epoch", "2", "--fit-args", "--data.batch_size 32 --data.val_size 50"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())["cpu-recipe"]
    today, laptop = report["cpu.yaml"], report["laptop.yaml"]["runs"][0]
    curves = {"tutorial": report["tutorial"]["curve"], "cpu.yaml": today["curve"], "laptop.yaml": laptop["curve"]}
    for curve in curves.values():  # two evaluations an epoch: one mid-epoch, one at its end
        epochs = [point["epoch"] for point in curve]
        assert len(epochs) == 4 and 0 < epochs[0] < epochs[1] == 1 < epochs[2] < epochs[3] == 2
        seconds = [point["train_seconds"] for point in curve]
        assert 0 < seconds[0] and seconds == sorted(set(seconds))
    assert report["targets"] == {"tutorial": curves["tutorial"][-1]["test_acc"], "85%": 0.85, "90%": 0.9}
    for name, curve in curves.items():
        for target, accuracy in report["targets"].items():
            first = next((point["train_seconds"] for point in curve if point["test_acc"] >= accuracy), None)
            assert report["seconds_to"][name][target] == first, (name, target)
    tutorial_seconds = report["seconds_to"]["tutorial"]["tutorial"]
    for name in ("cpu.yaml", "laptop.yaml"):
        reached = report["seconds_to"][name]["tutorial"]
        ratio = report["ratio_to_tutorial_accuracy_vs_tutorial"][name]
        assert ratio is None if reached is None else ratio == pytest.approx(reached / tutorial_seconds)
    # Trainer.fit's seconds leave the curve's evaluations out, so they exceed the last point's only by fit's end
    assert today["fit_seconds"] >= today["curve"][-1]["train_seconds"]
    assert report["ratio_fit_seconds_laptop_vs_cpu"] == pytest.approx(laptop["fit_seconds"] / today["fit_seconds"])
    assert today["precision"] == "32-true" and laptop["precision"] == automatic_precision("cpu")[0]
    assert laptop["seed"] == 0 and 0 <= laptop["test_acc"] <= 1
    table = (tmp_path / "benchmark.md").read_text()
    assert "| configs/fast/cpu.yaml | 1 | 32-true | 2 |" in table and "measured 2 times an epoch" in table
    assert f"| configs/fast/laptop.yaml | 1 | {laptop['precision']} | 2 |" in table


def test_accuracy_curve_evaluates_on_its_grid_and_leaves_evaluation_off_the_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    benchmark = load_benchmark()
    clock = [0.0]
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: clock[0])

    class Model(torch.nn.Module):  # predicts class 0; each evaluation costs 100 "seconds"
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            clock[0] += 50.0
            return torch.nn.functional.one_hot(torch.zeros(len(images), dtype=torch.long), 10).float()

    test_batches = [(torch.zeros(4, 3, 32, 32), torch.tensor([0, 0, 0, 1]))] * 2
    curve = benchmark.AccuracyCurve("fake", Model(), test_batches, evals_per_epoch=4)
    curve.begin()
    for epoch in range(2):
        for batch in range(1, 11):  # each training batch costs 1 "second"
            clock[0] += 1.0
            curve.record_if_due(batch, 10, epoch)
    # the first batch past each quarter of a 10-batch epoch: 3, 5, 8 and 10
    assert [point["epoch"] for point in curve.points] == [0.3, 0.5, 0.8, 1.0, 1.3, 1.5, 1.8, 2.0]
    assert [point["train_seconds"] for point in curve.points] == [3, 5, 8, 10, 13, 15, 18, 20]
    assert all(point["test_acc"] == 0.75 for point in curve.points)
    assert curve.model.training  # back in train mode after each evaluation


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_instructions_warns_with_the_fix(native: bool, npz_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    recwarn: pytest.WarningsRecorder) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    monkeypatch.setattr("cifar_lab.precision.cpu_has_bf16", lambda: native)
    build_cli(["--trainer.precision", "bf16-mixed", "--trainer.accelerator", "cpu", "--data.data_dir", str(npz_dir),
               "--trainer.logger", "false"], run=False)
    messages = [str(w.message) for w in recwarn if "no bf16 instructions" in str(w.message)]
    assert messages == ([] if native else [
        "trainer.precision=bf16-mixed: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 is emulated "
        "and usually slower than fp32; --trainer.precision 32-true is faster here"])


@pytest.mark.parametrize(("native", "accelerator", "precision", "expected"), [
    (True, "cpu", "null", "bf16-mixed"),  # the flag is there: native bf16 autocast
    (False, "cpu", "null", "32-true"),  # no flag: bf16 would be emulated
    (True, "auto", "null", "bf16-mixed"),  # no GPU here, so auto is the CPU
    (True, "cpu", "32-true", "32-true"),  # a precision the config sets wins
    (False, "cpu", "bf16-mixed", "bf16-mixed"),
])
def test_a_null_precision_is_bf16_where_the_cpu_has_it_and_fp32_elsewhere_and_a_set_one_wins(
        native: bool, accelerator: str, precision: str, expected: str, npz_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    monkeypatch.setattr("cifar_lab.precision.cpu_has_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the emulated-bf16 warning of the last case, tested above
        cli = build_cli(["--trainer.precision", precision, "--trainer.accelerator", accelerator,
                         "--data.data_dir", str(npz_dir), "--trainer.logger", "false"], run=False)
    assert cli.config.trainer.precision == expected  # what the saved config.yaml records
    assert cli.trainer.precision == expected
    said = [record.getMessage() for record in caplog.records if "trainer.precision is null" in record.getMessage()]
    assert len(said) == (precision == "null") and all(expected in line for line in said)
