"""Lightning's rich progress bar, redrawn on a clock instead of after every training step."""

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from cifar_lab.errors import ConfigError


class ThrottledProgressBar(RichProgressBar):
    """Redraws the training bar at most ``redraws_per_second`` times a second, and after each epoch's last batch.

    Lightning's bar redraws and reads every progress-bar metric back to the host after every training step: about
    0.3 ms of host time a step on a CPU, and a device sync on a GPU. Its ``refresh_rate`` counts steps, which
    suits neither a 0.4 s CPU step nor a 5 ms GPU step; a clock suits both.
    """

    def __init__(self, redraws_per_second: float = 10.0, **kwargs: Any) -> None:
        if redraws_per_second <= 0:
            raise ConfigError(f"redraws_per_second must be > 0, got {redraws_per_second}")
        super().__init__(**kwargs)
        self.redraw_interval = 1.0 / redraws_per_second
        self.last_redraw = -float("inf")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        # Under DDP a redraw can gather metrics from every process, so all must redraw at the same steps: a
        # clock differs between processes, and there the bar redraws every step as Lightning's does.
        if (trainer.world_size == 1 and now - self.last_redraw < self.redraw_interval
                and batch_idx + 1 < trainer.num_training_batches):
            return
        self.last_redraw = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
