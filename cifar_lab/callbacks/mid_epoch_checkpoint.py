"""``last.ckpt`` also in the middle of an epoch, so a killed long epoch loses minutes, not the epoch."""

from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from cifar_lab.errors import ConfigError

# With the time trigger, the steps between two reads of the clock: a save comes at most this many steps late.
CLOCK_READ_EVERY_N_STEPS = 10


class MidEpochCheckpoint(ModelCheckpoint):
    """Overwrite the run's ``last.ckpt`` every ``every_n_minutes`` of training, or every
    ``every_n_train_steps`` optimizer steps, from within the epoch.

    A second ``ModelCheckpoint`` because Lightning gives each one a single trigger: the CLI's
    ``checkpoint`` keeps the best on ``val/acc`` and ``last.ckpt`` at each epoch's end, this one
    only refreshes ``last.ckpt`` in between. The loaders, metrics and generators in the checkpoint
    let ``fit --resume`` continue from exactly that batch. Time-triggered by default, so a run whose
    epochs are short never pays for it; both null turns it off.

    Args:
        every_n_minutes: minutes of training between two saves (null: not by time).
        every_n_train_steps: optimizer steps between two saves (null: not by steps); set one of the two.
        dirpath: the folder of ``checkpoint``'s files (the CLI links it to ``checkpoint.dirpath``).
    """

    def __init__(self, every_n_minutes: float | None = 10.0, every_n_train_steps: int | None = None,
                 dirpath: str | Path | None = None) -> None:
        if every_n_minutes is not None and every_n_train_steps is not None:
            raise ConfigError(f"mid_epoch_checkpoint: set every_n_minutes ({every_n_minutes}) or "
                              f"every_n_train_steps ({every_n_train_steps}), not both; null turns one off")
        if every_n_minutes is not None and not every_n_minutes > 0:
            raise ConfigError(f"mid_epoch_checkpoint.every_n_minutes must be > 0 (or null), got {every_n_minutes}")
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ConfigError(f"mid_epoch_checkpoint.every_n_train_steps must be >= 1 (or null), "
                              f"got {every_n_train_steps}")
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=timedelta(minutes=every_n_minutes) if every_n_minutes is not None else None,
            every_n_epochs=0,  # the epoch's end is the other checkpoint's
            enable_version_counter=False,  # the same last.ckpt as the other checkpoint, never a last-v1.ckpt
        )
        self.every_n_minutes = every_n_minutes

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """With the time trigger, ``ModelCheckpoint``'s check runs every ``CLOCK_READ_EVERY_N_STEPS`` steps, not
        every step: it cost 0.07 ms of host time a step on our CPU proxy (``docs/performance.md``), and under DDP
        it broadcasts process 0's clock reading each time. Every process skips the same steps."""
        if self.every_n_minutes is not None and trainer.global_step % CLOCK_READ_EVERY_N_STEPS:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @cached_property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s key, built once: Lightning names each hook call after it, every training step
        for this callback, and ``ModelCheckpoint`` builds it anew each time (a ``repr`` of its triggers)."""
        return super().state_key

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Before any checkpoint is written, put what was logged up to its step on disk.

        A run resumed from a checkpoint logs again only the steps after it, so the TensorBoard events of
        the steps before must not sit in a writer's queue when the run is killed. A checkpoint saved in
        ``on_train_batch_end`` (this one's, or a step-triggered one) comes before Lightning logs that batch's
        step metrics, so they are logged first (Lightning logs them once more right after: same step and
        values, and readers keep one).
        """
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if trainer.training and progress.processed > progress.completed:
            trainer._logger_connector.update_train_step_metrics()  # no public way to log them early
        for logger in trainer.loggers:
            logger.save()
