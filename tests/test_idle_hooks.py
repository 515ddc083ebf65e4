"""What Lightning does for each callback at every batch: hooks a callback leaves empty are left out of its dispatch,
the ones it implements still run, the names it calls them by are built once, and the mid-epoch checkpoint reads
its clock every ten steps."""

from pathlib import Path
from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, model_checkpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from cifar_lab.callbacks import MidEpochCheckpoint, NonFiniteGuard, RandomStateCheckpoint, skip_idle_batch_hooks
from cifar_lab.callbacks.idle_hooks import BATCH_HOOKS
from cifar_lab.cli import build_cli


class CountsBatchEnds(Callback):
    def __init__(self) -> None:
        self.batch_ends = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.batch_ends += 1


def live_hooks(callback: Callback) -> list[str]:
    return [hook for hook in BATCH_HOOKS if getattr(callback, hook) is not None]


def test_only_the_batch_hooks_a_callback_implements_stay() -> None:
    counter = CountsBatchEnds()
    skip_idle_batch_hooks([counter])
    assert live_hooks(counter) == ["on_train_batch_end"]
    assert vars(counter)["on_before_backward"] is None


def test_a_hook_set_on_the_instance_is_left_alone() -> None:
    callback = Callback()
    callback.on_after_backward = lambda trainer, module: None
    skip_idle_batch_hooks([callback])
    assert live_hooks(callback) == ["on_after_backward"]


def test_a_fit_runs_the_implemented_hooks_of_callbacks_whose_idle_hooks_are_skipped(tmp_path: Path) -> None:
    # Lightning calls a hook only where it is callable: were that to change, the None hooks would fail this fit.
    counter, epoch_checkpoint = CountsBatchEnds(), ModelCheckpoint(dirpath=tmp_path / "epochs", save_last=True)
    step_checkpoint = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[counter, epoch_checkpoint, step_checkpoint])
    skip_idle_batch_hooks(trainer.callbacks)
    assert epoch_checkpoint.on_train_batch_end is None and step_checkpoint.on_train_batch_end is not None
    trainer.fit(BoringModel())
    assert counter.batch_ends == 4
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    assert (tmp_path / "epochs" / "last.ckpt").is_file()  # the epoch-only checkpoint saves at the epoch's end


def test_every_run_skips_the_idle_batch_hooks_of_its_callbacks(npz_dir: Path, tmp_path: Path) -> None:
    cli = build_cli(["--data.data_dir", str(npz_dir), "--trainer.default_root_dir", str(tmp_path),
                     "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    by_type = {type(callback): callback for callback in cli.trainer.callbacks}
    assert live_hooks(by_type[RandomStateCheckpoint]) == []
    assert live_hooks(by_type[ModelCheckpoint]) == []  # saves at epoch ends only, after validation
    assert live_hooks(by_type[MidEpochCheckpoint]) == ["on_train_batch_end"]  # every 10 minutes, from a batch's end
    assert live_hooks(by_type[NonFiniteGuard]) == ["on_train_batch_end"]
    assert live_hooks(by_type[LearningRateMonitor]) == ["on_train_batch_start"]
    assert callable(by_type[NonFiniteGuard].on_train_epoch_end)  # epoch hooks are not batch hooks: untouched


def test_the_mid_epoch_checkpoint_keeps_the_state_key_model_checkpoint_builds_for_it() -> None:
    # Built once instead of at every hook call; a checkpoint's callback states are keyed by it, so it must not change.
    for checkpoint in (MidEpochCheckpoint(), MidEpochCheckpoint(every_n_minutes=None, every_n_train_steps=7)):
        assert checkpoint.state_key == ModelCheckpoint.state_key.fget(checkpoint)
        assert checkpoint.state_key.startswith("MidEpochCheckpoint{")


class SavedAtSteps(Callback):
    """Sets a fake clock to one minute a step, and records the step of every checkpoint saved."""

    def __init__(self) -> None:
        self.now, self.saved_at = 0.0, []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.now = 60.0 * trainer.global_step

    def on_save_checkpoint(self, trainer: L.Trainer, *args: Any) -> None:
        self.saved_at.append(trainer.global_step)


def test_a_time_triggered_mid_epoch_checkpoint_reads_the_clock_every_ten_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = SavedAtSteps()
    monkeypatch.setattr(model_checkpoint.time, "monotonic", lambda: recorder.now)
    checkpoint = MidEpochCheckpoint(every_n_minutes=2.5, dirpath=tmp_path)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=25, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[recorder, checkpoint])
    trainer.fit(BoringModel())
    # 2.5 minutes are up from step 3 on; the clock is read at steps 10 and 20, each time 10 minutes after the last
    assert recorder.saved_at == [10, 20]
    assert (tmp_path / "last.ckpt").is_file()
