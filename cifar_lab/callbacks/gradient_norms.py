"""Per-parameter gradient norms, to spot vanishing or exploding gradients layer by layer."""

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import grad_norm
from torch.optim import Optimizer

from cifar_lab.errors import ConfigError


class GradientNorms(Callback):
    """Log ``grad_<p>_norm/<parameter>`` for every parameter of the backbone and ``grad_<p>_norm_total``
    (Lightning's ``grad_norm``), after backward and before the optimizer step (unscaled gradients).

    Off by default: it costs a reduction per parameter each time it logs. ``configs/gradient_norms.yaml`` adds it.

    Args:
        norm_type: the p of the p-norm (2: Euclidean; ``inf``: the largest absolute entry).
        every_n_steps: log every this many optimizer steps; null means ``trainer.log_every_n_steps``.
    """

    def __init__(self, norm_type: float = 2.0, every_n_steps: int | None = None) -> None:
        if norm_type <= 0:
            raise ConfigError(f"GradientNorms norm_type must be > 0 (2 for Euclidean, inf for the largest entry), "
                              f"got {norm_type}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"GradientNorms every_n_steps must be >= 1 or null, got {every_n_steps}")
        self.norm_type, self.every_n_steps = norm_type, every_n_steps

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        every = self.every_n_steps or trainer.log_every_n_steps
        if trainer.global_step % every != 0:
            return
        # Straight to the loggers, as LearningRateMonitor does: a value self.log-ged from this hook would be
        # written again at every later logging step until it is logged anew.
        norms = {name: float(value) for name, value in grad_norm(pl_module.backbone, self.norm_type).items()}
        for logger in trainer.loggers:
            logger.log_metrics(norms, step=trainer.global_step)
