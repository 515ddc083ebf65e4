"""Stop a diverging run at once, naming the step and the checkpoint to go back to."""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cifar_lab.errors import ConfigError, TrainingDivergedError

# Logged once, to every logger, by a run the guard stops: the step where the loss went bad (or the step of the
# refused save). ``compare`` and ``experiment`` read it to report the run as diverged rather than as failed.
DIVERGED_TAG = "train/diverged_at_step"


class NonFiniteGuard(Callback):
    """Raise ``TrainingDivergedError`` soon after the first NaN/inf training loss, and refuse to save
    NaN/inf weights.

    Without it a diverged run trains on NaNs to the end and its checkpoints are useless. Each step only keeps
    its detached loss (a list append: no device work, no host-device sync); every ``check_every_n_steps`` steps
    and at the end of each epoch the kept losses are stacked and read back once, so a GPU never waits for it
    (Trainer's ``detect_anomaly`` instead slows every backward pass). The decision is shared by all DDP
    processes so that they stop together.

    Args:
        check_every_n_steps: how often the recorded losses are read back; the run stops at most this
            many steps after the loss went bad, and the message names the step where it did.
    """

    def __init__(self, check_every_n_steps: int = 20) -> None:
        if check_every_n_steps < 1:
            raise ConfigError(f"non_finite_guard.check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self.losses: list[torch.Tensor] = []  # the losses since the last check, on the device
        self.steps: list[int] = []  # the step of each of them

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.losses, self.steps = [], []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss")  # Lightning's loops hand a dict, its loss detached (automatic and manual)
        if loss is None:
            return
        step = trainer.global_step
        self.losses.append(loss)
        self.steps.append(step)
        if step % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        """Read the recorded losses back (one sync) and stop at the first that is not finite."""
        bad_at = None
        if self.steps:
            finite = torch.isfinite(torch.stack(self.losses)).tolist()
            bad_at = finite.index(False) if not all(finite) else None
        if trainer.strategy.reduce_boolean_decision(bad_at is not None, all=False):
            step = self.steps[bad_at] if bad_at is not None else trainer.global_step
            what = (f"the training loss is {float(self.losses[bad_at])} at step {step}" if bad_at is not None
                    else "the training loss became NaN/inf on another process")
            self._stop(trainer, f"{what} (epoch {trainer.current_epoch})", step)
        self.losses, self.steps = [], []

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            self._stop(trainer, f"the weights ({bad[0]} and {len(bad) - 1} more) are NaN/inf at step "
                                f"{trainer.global_step} (epoch {trainer.current_epoch}); this state was not saved",
                       trainer.global_step)

    @staticmethod
    def _stop(trainer: L.Trainer, what: str, step: int) -> None:
        for logger in trainer.loggers:  # written before raising, so the run's own logs say how it ended
            logger.log_metrics({DIVERGED_TAG: step}, step=trainer.global_step)
            logger.save()
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        # Checkpoints are written atomically, so a last.ckpt on disk is the last complete, finite state.
        good = last if last and Path(last).is_file() else "none was saved yet"
        raise TrainingDivergedError(
            f"training diverged: {what}. Last good checkpoint: {good}. Lower the learning rate or set "
            f"trainer.gradient_clip_val, then resume from that checkpoint."
        )
