"""Patch-whitening initialisation of a backbone's first convolution from training images.

Whitening the 2x2 input patches makes the first layer's output decorrelated with unit variance,
which lets a small net train with a high learning rate from the first step.
"""

import lightning as L

from cifar_lab.data.device_loader import normalize
from cifar_lab.errors import ConfigError


class PatchWhitening(L.Callback):
    """Call ``backbone.init_whitening`` on ``num_images`` training images when a fit starts (not on
    resume), and train the whitening bias only for the first ``bias_epochs`` epochs."""

    def __init__(self, num_images: int = 5000, bias_epochs: int | None = None) -> None:
        self.num_images, self.bias_epochs = num_images, bias_epochs

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        backbone = pl_module.backbone
        if not hasattr(backbone, "init_whitening"):
            raise ConfigError(f"backbone {type(backbone).__name__} has no whitening layer; "
                              f"remove PatchWhitening from trainer.callbacks")
        if trainer.ckpt_path:  # resuming: the checkpoint already holds the whitening weights
            return
        datamodule = trainer.datamodule
        images = datamodule.datasets["train"].images[: self.num_images]
        backbone.init_whitening(normalize(images, datamodule.input_stats).to(pl_module.device))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bias_epochs is not None:
            pl_module.backbone.whiten.bias.requires_grad_(trainer.current_epoch < self.bias_epochs)
