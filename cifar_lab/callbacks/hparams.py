"""The run's hyperparameters in TensorBoard's HPARAMS tab, ranked by ``hp_metric`` = best ``val/acc``."""

import math
from typing import Any, Literal

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from cifar_lab.reporting.runs import hyperparameters

HP_METRIC = "hp_metric"


def tensorboard_loggers(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


class SaveConfigAsHparams(SaveConfigCallback):
    """Writes ``config.yaml`` and, when fitting, logs its seed/model/data/trainer settings as TensorBoard hparams.

    The model's own ``save_hyperparameters`` leaves out the optimizer and schedule; the config has them.
    ``hp_metric`` starts as NaN and ``HpMetric`` fills it in.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in tensorboard_loggers(trainer):
            logger.log_hyperparams(hyperparameters(config), metrics={HP_METRIC: math.nan})


class HpMetric(Callback):
    """Logs the best value so far of ``monitor`` as ``hp_metric`` after each validation.

    Args:
        monitor: the metric that ranks runs.
        mode: ``max`` if larger is better, else ``min``.
    """

    def __init__(self, monitor: str = "val/acc", mode: Literal["max", "min"] = "max") -> None:
        self.monitor = monitor
        self.better = max if mode == "max" else min
        self.best: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        value = float(value)
        self.best = value if self.best is None else self.better(self.best, value)
        for logger in tensorboard_loggers(trainer):
            logger.log_metrics({HP_METRIC: self.best}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
