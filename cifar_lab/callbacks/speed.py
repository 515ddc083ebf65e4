"""Seconds per training epoch and training images per second, logged once per epoch."""

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class EpochSpeed(Callback):
    """Logs ``train/epoch_time_s`` (the whole epoch, validation included) and ``train/images_per_s``
    (training batches only, summed over devices).

    Lightning's ``ThroughputMonitor`` reports per-step windows and needs a batch-size function; this
    gives the two per-epoch numbers that runs are compared by.
    """

    def __init__(self) -> None:
        self.epoch_start = self.last_batch_end = 0.0
        self.images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start = self.last_batch_end = time.perf_counter()
        self.images = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.images += len(batch[0])
        self.last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        training_time = self.last_batch_end - self.epoch_start
        if training_time <= 0:
            return
        pl_module.log("train/epoch_time_s", time.perf_counter() - self.epoch_start)
        pl_module.log("train/images_per_s", self.images / training_time, reduce_fx="sum", sync_dist=True)
