"""Lightning's rich progress bar, redrawn on a clock instead of after every training step."""

import time
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Checkpoint, ProgressBar, RichProgressBar

from cifar_lab.errors import ConfigError


class ThrottledProgressBar(RichProgressBar):
    """Redraws the training bar at most ``redraws_per_second`` times a second, and after each epoch's last batch.

    Lightning's bar redraws after every training step: 0.14 ms of host time a step on our CPU proxy
    (``docs/performance.md``). Its ``refresh_rate`` counts steps, which suits neither a 0.4 s CPU step nor a 5 ms
    GPU step; a clock suits both.

    Args:
        redraws_per_second: at most this many redraws a second (a number > 0).
        redraw_metrics: metrics the bar shows from the callback metrics (logged without ``prog_bar``) or the
            module's ``step_metrics`` (which ``ImageClassifier`` writes to the loggers itself, ``train/loss_step``),
            read back to the host when it redraws. Lightning reads a ``prog_bar=True`` value back after every
            step, whether or not a bar redraws (on a GPU, a device sync a step).
    """

    def __init__(self, redraws_per_second: float = 10.0, redraw_metrics: Sequence[str] = ("train/loss_step",),
                 **kwargs: Any) -> None:
        if redraws_per_second <= 0:
            raise ConfigError(f"ThrottledProgressBar.redraws_per_second must be a number > 0 (redraws a second), "
                              f"got {redraws_per_second}")
        if isinstance(redraw_metrics, str):  # a string is a sequence too: of one-letter names
            raise ConfigError(f"ThrottledProgressBar.redraw_metrics must be a list of metric names, "
                              f"got the string {redraw_metrics!r}: write [{redraw_metrics!r}]")
        super().__init__(**kwargs)
        self.redraw_interval = 1.0 / redraws_per_second
        self.redraw_metrics = list(redraw_metrics)
        self.last_redraw = -float("inf")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Lightning's bar metrics and ``redraw_metrics``, each read back to the host here, at a redraw."""
        metrics = {**trainer.callback_metrics, **getattr(pl_module, "step_metrics", {})}  # any LightningModule
        shown = {name: float(metrics[name]) for name in self.redraw_metrics if name in metrics}
        return super().get_metrics(trainer, pl_module) | shown

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if now - self.last_redraw < self.redraw_interval and batch_idx + 1 < trainer.num_training_batches:
            return
        self.last_redraw = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar_before_checkpoints(callbacks: list[Callback]) -> list[Callback]:
    """The callbacks with the progress bar moved after all others but the checkpoints, where Lightning puts its
    default bar, whether the config listed the bar or not.

    At an epoch's end the bar reads the epoch's metrics on process 0 only, which gathers them from every DDP
    process; the others gather when a later callback or Lightning reads them. A callback in between that waits
    for every process (the divergence guard's shared decision, a synced ``self.log``) would hang the run.
    """
    bars = [callback for callback in callbacks if isinstance(callback, ProgressBar)]
    others = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    at = next((i for i, callback in enumerate(others) if isinstance(callback, Checkpoint)), len(others))
    return [*others[:at], *bars, *others[at:]]
