"""The CLI's progress bar is redrawn on a clock, not after every training step, unless the config chose its own."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar, TQDMProgressBar

from cifar_lab.callbacks import EpochSpeed, MidEpochCheckpoint, NonFiniteGuard, ThrottledProgressBar
from cifar_lab.callbacks import progress as progress_module
from cifar_lab.cli import build_cli
from cifar_lab.errors import ConfigError


def callback_types(npz_dir: Path, tmp_path: Path, *extra: str) -> list[type]:
    cli = build_cli(["--data.data_dir", str(npz_dir), "--trainer.default_root_dir", str(tmp_path),
                     "--trainer.logger", "false", *extra], run=False)
    return [type(callback) for callback in cli.trainer.callbacks]


def progress_bars(npz_dir: Path, tmp_path: Path, *extra: str) -> list[type]:
    return [kind for kind in callback_types(npz_dir, tmp_path, *extra) if issubclass(kind, ProgressBar)]


def test_the_cli_redraws_its_progress_bar_on_a_clock(npz_dir: Path, tmp_path: Path) -> None:
    assert progress_bars(npz_dir, tmp_path) == [ThrottledProgressBar]


def test_a_progress_bar_the_config_lists_is_kept(npz_dir: Path, tmp_path: Path) -> None:
    chosen = "lightning.pytorch.callbacks.TQDMProgressBar"  # a single callback, not a list: Trainer takes both
    assert progress_bars(npz_dir, tmp_path, "--trainer.callbacks", chosen) == [TQDMProgressBar]


def test_no_progress_bar_when_the_config_turns_it_off(npz_dir: Path, tmp_path: Path) -> None:
    assert progress_bars(npz_dir, tmp_path, "--trainer.enable_progress_bar", "false") == []


@pytest.mark.parametrize("listed", [[], ["--trainer.callbacks", "lightning.pytorch.callbacks.RichProgressBar"]],
                         ids=["default bar", "bar the config lists"])
def test_the_progress_bar_runs_after_the_callbacks_that_wait_for_every_ddp_process(
        npz_dir: Path, tmp_path: Path, listed: list[str]) -> None:
    # At an epoch's end the bar gathers the epoch metrics on process 0 alone; before the guard's shared decision
    # or EpochSpeed's synced log, process 0 would gather while the others reduce, and a DDP fit would hang.
    kinds = callback_types(npz_dir, tmp_path, *listed)
    bar = next(i for i, kind in enumerate(kinds) if issubclass(kind, ProgressBar))
    assert kinds.index(NonFiniteGuard) < bar and kinds.index(EpochSpeed) < bar
    assert bar < kinds.index(ModelCheckpoint) and bar < kinds.index(MidEpochCheckpoint)


def test_the_bar_redraws_once_a_redraw_interval_and_after_the_epochs_last_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    redrawn = []
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end",
                        lambda self, trainer, module, outputs, batch, batch_idx: redrawn.append(batch_idx))
    clock = iter([100.0, 100.05, 100.12, 100.13, 100.19, 100.5, 100.51])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    bar, trainer = ThrottledProgressBar(redraws_per_second=10), SimpleNamespace(num_training_batches=7)
    for batch_idx in range(7):
        bar.on_train_batch_end(trainer, None, None, None, batch_idx)
    # 0 first; 2 is 0.12 s after it; 5 is 0.38 s after 2; 6 is the epoch's last batch, 0.01 s after 5
    assert redrawn == [0, 2, 5, 6]


def test_a_redraw_rate_of_zero_is_refused_with_the_allowed_range() -> None:
    allowed = r"^ThrottledProgressBar.redraws_per_second must be a number > 0 \(redraws a second\), got 0$"
    with pytest.raises(ConfigError, match=allowed):
        ThrottledProgressBar(redraws_per_second=0)


def test_a_single_metric_name_given_as_a_string_is_refused_with_the_list_to_write() -> None:
    with pytest.raises(ConfigError, match=r"must be a list of metric names, got the string 'val/acc': "
                                          r"write \['val/acc'\]$"):
        ThrottledProgressBar(redraw_metrics="val/acc")
