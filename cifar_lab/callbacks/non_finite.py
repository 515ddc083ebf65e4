"""Stop a diverging run at once, naming the step and the checkpoint to go back to."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cifar_lab.errors import TrainingDivergedError


class NonFiniteGuard(Callback):
    """Raise ``TrainingDivergedError`` at the first NaN/inf training loss, and refuse to save NaN/inf weights.

    Without it a diverged run trains on NaNs to the end and its checkpoints are useless. The loss
    check is one scalar per step (Trainer's ``detect_anomaly`` instead slows every backward pass);
    the decision is shared by all DDP processes so that they stop together.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        finite = bool(torch.isfinite(loss).all())
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            self._stop(trainer, f"the training loss is {loss.item()} at step {trainer.global_step} "
                                f"(epoch {trainer.current_epoch}, batch {batch_idx})")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            self._stop(trainer, f"the weights ({bad[0]} and {len(bad) - 1} more) are NaN/inf at step "
                                f"{trainer.global_step} (epoch {trainer.current_epoch}); this state was not saved")

    @staticmethod
    def _stop(trainer: L.Trainer, what: str) -> None:
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        # Checkpoints are written atomically, so a last.ckpt on disk is the last complete, finite state.
        good = last if last and Path(last).is_file() else "none was saved yet"
        raise TrainingDivergedError(
            f"training diverged: {what}. Last good checkpoint: {good}. Lower the learning rate or set "
            f"trainer.gradient_clip_val, then resume from that checkpoint."
        )
