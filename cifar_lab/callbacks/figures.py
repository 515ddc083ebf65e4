"""Figures in TensorBoard: confusion matrix, per-class accuracy, sample predictions, the test's reliability
diagram, first-layer filters, and the training images as the model sees them (augmented)."""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from cifar_lab.callbacks.hparams import tensorboard_loggers
from cifar_lab.errors import ConfigError
from cifar_lab.reporting.calibration import calibration_bins
from cifar_lab.reporting.plots import (
    confusion_matrix_figure,
    denormalize,
    filter_grid,
    first_conv,
    per_class_accuracy_figure,
    prediction_grid_figure,
    reliability_diagram_figure,
)


class FigureLogger(Callback):
    """Adds figures to the TensorBoard logger at the end of validation every ``every_n_epochs`` epochs (and the
    last epoch), at the end of ``test`` (with the reliability diagram), the first convolution's filters at the end of
    ``fit``, and once per run the first training batch as augmented (``train/augmented_images``), to see what the
    augmentation does.

    Each figure has its own switch; with all of them off (or ``every_n_epochs: 0`` for validation) nothing is
    collected. Needs ``validation_step``/``test_step`` to return the logits and the model to have
    ``class_names`` and the ``test_ece`` metric, as ``ImageClassifier`` does.

    Args:
        every_n_epochs: validation epochs between figures; 0 draws none during fit.
        confusion_matrix: row-normalised confusion matrix with class names.
        per_class_accuracy: bar chart of each class's accuracy.
        sample_predictions: how many images of the first batches to show with predicted/true class; 0: none.
        first_layer_filters: the first ``Conv2d``'s filters as an image grid at the end of fit.
        training_images: how many images of the first training batch to show, augmented; 0: none.
        reliability_diagram: at the end of ``test``, accuracy against confidence per bin of ``test/ece``
            (``test/reliability_diagram``).
    """

    def __init__(self, every_n_epochs: int = 5, confusion_matrix: bool = True, per_class_accuracy: bool = True,
                 sample_predictions: int = 16, first_layer_filters: bool = True, training_images: int = 16,
                 reliability_diagram: bool = True) -> None:
        if every_n_epochs < 0 or sample_predictions < 0 or training_images < 0:
            raise ConfigError("figures.every_n_epochs, figures.sample_predictions and figures.training_images must "
                              "be >= 0")
        self.every_n_epochs = every_n_epochs
        self.confusion_matrix = confusion_matrix
        self.per_class_accuracy = per_class_accuracy
        self.sample_predictions = sample_predictions
        self.first_layer_filters = first_layer_filters
        self.training_images = training_images
        self.reliability_diagram = reliability_diagram
        self.confmat: MulticlassConfusionMatrix | None = None
        self.samples: list[tuple[Tensor, Tensor, Tensor]] = []
        self.collecting = False

    @property
    def needs_confmat(self) -> bool:
        return self.confusion_matrix or self.per_class_accuracy

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, draw: bool) -> None:
        self.collecting = draw and bool(tensorboard_loggers(trainer)) and (
            self.needs_confmat or self.sample_predictions > 0)
        self.samples = []
        if self.collecting and self.needs_confmat:
            if self.confmat is None:
                self.confmat = MulticlassConfusionMatrix(len(pl_module.class_names), normalize="true")
            self.confmat.to(pl_module.device).reset()

    def _collect(self, logits: Tensor, batch: tuple[Tensor, Tensor]) -> None:
        if not self.collecting:
            return
        if not isinstance(logits, Tensor):
            raise ConfigError("figures: validation_step/test_step must return the logits (ImageClassifier does)")
        images, targets = batch
        if self.needs_confmat:
            self.confmat.update(logits, targets)
        wanted = self.sample_predictions - sum(len(s[0]) for s in self.samples)
        if wanted > 0:
            preds = logits.argmax(dim=1)
            self.samples.append((images[:wanted].detach().cpu(), targets[:wanted].cpu(), preds[:wanted].cpu()))

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.collecting:
            return
        self.collecting = False
        names = pl_module.class_names
        confmat = self.confmat.compute() if self.needs_confmat else None  # on every rank: it syncs
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        figures = {}
        if self.confusion_matrix:
            figures["confusion_matrix"] = confusion_matrix_figure(confmat, names)
        if self.per_class_accuracy:
            figures["per_class_accuracy"] = per_class_accuracy_figure(confmat.diagonal(), names)
        if self.samples:
            images, targets, preds = (torch.cat(parts) for parts in zip(*self.samples))
            shown = denormalize(images, trainer.datamodule.input_stats)
            figures["predictions"] = prediction_grid_figure(shown, targets, preds, names)
        for logger in tensorboard_loggers(trainer):
            for name, figure in figures.items():
                logger.experiment.add_figure(f"{stage}/{name}", figure, global_step=step, close=False)
        self.samples = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # once per run (a resumed run has taken steps already); the cheap tests first, as this runs every step
        if not (self.training_images and batch_idx == 0 and trainer.global_step == 0 and trainer.is_global_zero):
            return
        loggers = tensorboard_loggers(trainer)
        if not loggers:
            return
        images, targets = (part[: self.training_images] for part in batch)
        shown = denormalize(images.float(), trainer.datamodule.input_stats)
        figure = prediction_grid_figure(shown, targets, None, pl_module.class_names)
        for logger in loggers:
            logger.experiment.add_figure("train/augmented_images", figure, global_step=0, close=False)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs
        scheduled = self.every_n_epochs > 0 and (epoch % self.every_n_epochs == 0 or last)
        self._start(trainer, pl_module, scheduled and not trainer.sanity_checking)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, draw=True)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")
        loggers = tensorboard_loggers(trainer)
        if not (self.reliability_diagram and loggers):
            return
        bins = calibration_bins(pl_module.test_ece)  # on every rank: it syncs
        if trainer.is_global_zero:
            figure = reliability_diagram_figure(*bins)
            for logger in loggers:
                logger.experiment.add_figure("test/reliability_diagram", figure, global_step=trainer.global_step,
                                             close=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        conv = first_conv(pl_module) if self.first_layer_filters and trainer.is_global_zero else None
        if conv is None:
            return
        for logger in tensorboard_loggers(trainer):
            logger.experiment.add_image("filters/first_conv", filter_grid(conv), global_step=trainer.global_step)
