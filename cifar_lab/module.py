"""ImageClassifier: any registered backbone + cross-entropy + injected optimizer/schedule + metrics."""

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_deprecation
from torch import Tensor
from torchmetrics import ClasswiseWrapper, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from cifar_lab.checkpoint_io import check_state_dict_fits, load_checkpoint_file
from cifar_lab.data.augment import ChannelStats, batch_mix, normalization_stats
from cifar_lab.data.resumable import run_seed, sample_seed, seeded_rng
from cifar_lab.data.sources import RELEASES
from cifar_lab.models import create
from cifar_lab.optim import apply_group_scales, parameter_groups
from cifar_lab.reporting.calibration import calibration_error
from cifar_lab.schedules import build_scheduler

# Checkpoint key of the running training metrics of the epoch the checkpoint was saved in.
EPOCH_METRICS_KEY = "train_epoch_metrics"
# Training steps whose predictions and losses wait to be added to train/acc and train/loss_epoch together: the two
# torchmetrics updates cost about 0.4 ms of host time on our CPU however many steps they add (docs/performance.md),
# 2 µs a step once per 200 steps. 200 steps of predictions and labels hold 3.2 kB per image of a batch on the device.
TRAIN_METRICS_EVERY_N_STEPS = 200


def accuracy_metrics(num_classes: int, prefix: str, top5: bool = True) -> MetricCollection:
    """Top-1 (plain accuracy, micro average) and, when asked and there are enough classes, top-5.

    The inputs are the module's own logits and labels: skipping torchmetrics' input checks avoids a
    host-device sync on every training step.
    """
    metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
    if top5 and num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro", validate_args=False)
    return MetricCollection(metrics, prefix=prefix)


class ImageClassifier(L.LightningModule):
    """Image classification with a backbone chosen by name.

    Args:
        backbone: a registered name (``cifar-lab models`` lists them), ``torchvision:<name>`` or
            ``package.module:factory``.
        backbone_kwargs: extra keyword arguments for the backbone factory.
        num_classes: linked from the DataModule.
        class_names: linked from the DataModule; names the per-class test accuracies.
        input_stats: linked from the DataModule: the per-channel (mean, std) its images are normalised with. Kept
            in the checkpoint, so inference tools (``export``, ``visualize``, ``robustness``) normalise as training did.
        optimizer: factory ``params -> Optimizer``, e.g. SGD or AdamW from YAML.
        lr_scheduler: factory ``optimizer -> scheduler``; ``T_max``/``total_steps`` default to the
            length of training in ``scheduler_interval`` units.
        scheduler_interval: step the schedule every ``epoch`` or every optimizer ``step``.
        scheduler_monitor: the epoch metric ``ReduceLROnPlateau`` watches (``val/loss``, ``val/acc``,
            ``train/loss_epoch``, ``train/acc``; its ``mode`` must match: ``max`` for accuracies).
        label_smoothing: cross-entropy label smoothing for training.
        mixup_alpha, cutmix_alpha: MixUp / CutMix of each training batch (``torchvision.transforms.v2``) with
            mixing ratios drawn from Beta(alpha, alpha); 0 turns one off, with both on a batch gets one of the two.
            The loss uses the mixed (soft) targets; ``train/acc`` counts against the images' own labels.
        mix_prob: the chance that a training batch is mixed at all.
        tta: test-time augmentation at val/test/predict: ``flip`` averages the logits of the image and
            its mirror; ``flip_translate`` also of one-pixel shifts (the fast recipes' choice). Taken from the
            config or command line of each command, not from a checkpoint, so ``cifar-lab predict ... --model.tta
            flip`` chooses it for one prediction.
        channels_last: NHWC memory format for the backbone and every batch it sees, from either loader
            (faster convs on GPUs); the one memory-format knob of a run.
        compile_mode: ``torch.compile`` the backbone with this mode (``default``, ``max-autotune``...).
        norm_lr_scale: learning-rate multiplier for normalisation layers' parameters (their weight
            decay is divided by it, so the decay per step stays the same).
        no_decay_norm_bias: no weight decay on normalisation parameters and biases.
        predict_with_tta: deprecated; ``true`` means ``tta: flip``.
    """

    def __init__(
        self,
        backbone: str = "simple_cnn",
        backbone_kwargs: dict[str, Any] | None = None,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        input_stats: ChannelStats | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        tta: Literal["none", "flip", "flip_translate"] = "none",
        channels_last: bool = False,
        compile_mode: str | None = None,
        norm_lr_scale: float = 1.0,
        no_decay_norm_bias: bool = False,
        predict_with_tta: bool | None = None,
    ) -> None:
        super().__init__()
        if predict_with_tta is not None:
            rank_zero_deprecation("model.predict_with_tta is deprecated: model.tta is the one test-time augmentation "
                                  "knob (pass --model.tta flip to predict)")
            tta = "flip" if predict_with_tta and tta == "none" else tta
        # tta is an evaluation choice, not part of the trained model: LightningCLI restores a checkpoint's
        # hyperparameters over the command line, which would make `predict --model.tta flip` a no-op.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "tta", "predict_with_tta"])
        self.tta = tta
        self.backbone = create(backbone, num_classes=num_classes, **(backbone_kwargs or {}))
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.batch_mix = batch_mix(num_classes, mixup_alpha, cutmix_alpha, mix_prob)
        self.class_names = class_names or [f"class_{i}" for i in range(num_classes)]
        self.train_loss = MeanMetric(nan_strategy="disable")  # NaN losses are NonFiniteGuard's business, without a sync
        self.train_metrics = accuracy_metrics(num_classes, "train/", top5=False)  # top-5 would triple its host time
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")
        self.test_per_class = ClasswiseWrapper(MulticlassAccuracy(num_classes, average="none"), self.class_names,
                                               prefix="test/acc_")
        self.test_ece = calibration_error(num_classes)  # test/ece; FigureLogger and RunReport draw its bins
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile_mode is not None:
            self.backbone.compile(mode=compile_mode)  # in place: state_dict keys stay the same
        self.example_input_array = torch.zeros(2, 3, 32, 32)  # for the model summary and TensorBoard's graph
        self.input_stats = input_stats  # load_classifier fills it in for checkpoints older than this hparam
        self.data_hparams: dict[str, Any] = {}  # load_classifier: the DataModule arguments of the checkpoint
        self.logged_epoch = -1  # the epoch whose epoch metrics are registered with self.log
        self.waiting_steps: list[tuple[Tensor, Tensor, Tensor]] = []  # (predicted classes, labels, loss) of each
        # training step not yet in the training metrics
        self.step_loss_to_write: Tensor | None = None  # this step's loss, where the loggers write it
        self.step_metrics: dict[str, Tensor] = {}  # the last step metrics written, for the progress bar
        self.resumed_epoch_metrics: dict[str, Any] | None = None

    def forward(self, images: Tensor) -> Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def predict_logits(self, images: Tensor) -> Tensor:
        """Logits averaged over the test-time augmentation views chosen by ``tta``."""
        if self.tta == "none":
            return self(images)
        logits = (self(images) + self(images.flip(-1))) / 2
        if self.tta == "flip_translate":
            padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
            shifted = [padded[..., :-2, :-2], padded[..., 2:, 2:]]  # one pixel up-left and down-right
            translated = sum((self(v) + self(v.flip(-1))) / 2 for v in shifted) / len(shifted)
            logits = (logits + translated) / 2
        return logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        mixed_targets = targets
        if self.batch_mix is not None:  # the mix of a batch depends on the seed and its place in the run alone
            with seeded_rng(sample_seed(run_seed(), self.current_epoch, self.global_rank, batch_idx)):
                images, mixed_targets = self.batch_mix(images, targets)
        logits = self(images)
        loss = F.cross_entropy(logits, mixed_targets, label_smoothing=self.hparams.label_smoothing)
        self.waiting_steps.append((logits.argmax(dim=1), targets, loss.detach()))  # argmax: no graph to detach
        if self._step_metrics_written():
            self.step_loss_to_write = loss.detach()
        return loss

    def on_train_batch_end(self, outputs: Tensor | dict[str, Any], batch: Any, batch_idx: int) -> None:
        """Every ``TRAIN_METRICS_EVERY_N_STEPS`` steps, and after the epoch's last step (its metrics are read at its
        end: by the progress bar, before ``on_train_epoch_end``), update the training metrics with the steps since.
        The points depend on the step alone, so a resumed run adds up its losses in the same groups as an
        uninterrupted one."""
        if self.global_step % TRAIN_METRICS_EVERY_N_STEPS == 0 or self.trainer.fit_loop.epoch_loop.done:
            self._update_train_metrics()
        if self.step_loss_to_write is not None:
            self._write_step_loss()

    def _write_step_loss(self) -> None:
        """Write ``train/loss_step`` to the loggers through the call Lightning's own logging ends in (its logger
        connector's ``log_metrics``: the same step and ``epoch``, each logger saved, ``trainer.logged_metrics``
        updated), without ``self.log``.

        Each ``self.log`` call costs about a millisecond of host time on our CPU (it moves its stored entry to the
        value's device, attribute by attribute): half the extra instructions a default run's step had over bare
        Lightning (``docs/performance.md``). The loss is read back to the host there, after the optimizer step,
        only where a logger writes it; ``step_metrics`` keeps it for the progress bar, with or without a logger.
        """
        self.step_metrics = {"train/loss_step": self.step_loss_to_write}
        self.step_loss_to_write = None
        self.trainer._logger_connector.log_metrics(dict(self.step_metrics))  # no public way to log without self.log

    def on_train_epoch_end(self) -> None:
        self._update_train_metrics()  # an epoch that ended where the last batch did not tell

    def _update_train_metrics(self) -> None:
        """One torchmetrics update for the waiting steps' predictions, one for their losses per batch size.

        A step's loss counts once for each of its images, as a view repeating it: ``MeanMetric`` ignores its
        ``weight`` under ``nan_strategy="disable"`` (torchmetrics 1.9), the one strategy that needs no host sync.
        """
        if not self.waiting_steps:
            return
        predictions, targets, losses = zip(*self.waiting_steps)
        self.waiting_steps = []
        self.train_metrics.update(torch.cat(predictions), torch.cat(targets))
        sizes = [batch.shape[0] for batch in targets]  # not len(): a Python call of torch's per tensor
        for size in sorted(set(sizes)):
            same_size = torch.stack([loss for loss, batch_size in zip(losses, sizes) if batch_size == size])
            self.train_loss.update(same_size[:, None].expand(-1, size))

    def on_train_epoch_start(self) -> None:
        self._register_epoch_metrics()

    def on_train_start(self) -> None:
        """Resumed inside an epoch (where Lightning skips ``on_train_epoch_start``), carry on with the running
        training metrics the checkpoint saved, and register them for the epoch's end."""
        self.logged_epoch = -1  # a new fit of this module registers its epochs afresh
        self.waiting_steps, self.step_loss_to_write = [], None
        resumed, self.resumed_epoch_metrics = self.resumed_epoch_metrics, None
        if resumed is None or resumed["epoch"] != self.current_epoch:
            return
        for name, metric in self._epoch_metrics().items():
            metric.reset()
            metric.merge_state({key: value[self.global_rank].to(self.device)
                                for key, value in resumed["states"][name].items()})
            metric._update_count = 1  # restored, not empty: torchmetrics would warn that compute() came first
        waiting = {key: value[self.global_rank].to(self.device) for key, value in resumed.get("waiting", {}).items()}
        if waiting:
            sizes = waiting.pop("sizes").tolist()
            self.waiting_steps = list(zip(waiting["predictions"].split(sizes), waiting["targets"].split(sizes),
                                          waiting["losses"].unbind()))
        self._register_epoch_metrics()

    def _register_epoch_metrics(self) -> None:
        """Register the epoch metrics once an epoch: Lightning computes, logs and resets them at the epoch's end.

        Each ``self.log`` call costs a fraction of a millisecond of host time, against a GPU step of a
        few milliseconds in the fast recipes, so a training step logs only what will be written or shown.
        """
        if self.logged_epoch == self.current_epoch:
            return
        self.logged_epoch = self.current_epoch
        self.log("train/loss_epoch", self.train_loss, prog_bar=self._progress_bar_shown(), on_step=False,
                 on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)

    def _epoch_metrics(self) -> dict[str, Any]:
        return {"loss": self.train_loss, **dict(self.train_metrics.items(keep_base=True, copy_state=False))}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep every process's running training metrics and the steps waiting to join them, so an epoch resumed
        from a mid-epoch checkpoint reports the same ``train/acc`` and ``train/loss_epoch`` as an uninterrupted
        one. A checkpoint saved in a callback's ``on_train_batch_end`` comes before this module's, where the step's
        loss is written: it is written here first, so the events on disk reach the checkpoint's step."""
        if self.step_loss_to_write is not None:
            self._write_step_loss()
        states = {name: self._gathered(metric.metric_state) for name, metric in self._epoch_metrics().items()}
        saved = {"epoch": self.current_epoch, "states": states}
        if self.waiting_steps:  # the same steps wait on every process: they take their steps together
            predictions, targets, losses = zip(*self.waiting_steps)
            saved["waiting"] = self._gathered({
                "predictions": torch.cat(predictions), "targets": torch.cat(targets), "losses": torch.stack(losses),
                "sizes": torch.tensor([len(batch) for batch in targets], device=self.device)})
        checkpoint[EPOCH_METRICS_KEY] = saved

    def _gathered(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each tensor from every process, stacked along a first dimension (of one, without DDP), on the CPU."""
        gathered = {key: self.all_gather(value) for key, value in tensors.items()}
        return {key: (value if self.trainer.world_size > 1 else value[None]).cpu() for key, value in gathered.items()}

    def _progress_bar_shown(self) -> bool:
        """A progress bar metric is read back to the host on every step, a device sync."""
        return self.trainer.progress_bar_callback is not None

    def _step_metrics_written(self) -> bool:
        """Whether the logger writes step metrics after this optimizer step (``trainer.log_every_n_steps``)."""
        every = self.trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, metrics: MetricCollection) -> Tensor:
        images, targets = batch
        logits = self.predict_logits(images)
        loss = F.cross_entropy(logits, targets)
        metrics.update(logits, targets)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)
        self.log_dict(metrics, prog_bar=True)
        return logits

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val", self.val_metrics)  # logits, for callbacks such as FigureLogger

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits = self._evaluate(batch, "test", self.test_metrics)
        self.test_per_class.update(logits, batch[1])
        self.test_ece.update(logits.softmax(dim=1), batch[1])
        return logits

    def on_test_epoch_end(self) -> None:
        """Log and reset the per-class accuracies and the ECE; Lightning runs the callbacks' ``on_test_epoch_end``
        first, so the reliability diagrams are drawn from the full metric."""
        self.log_dict({**self.test_per_class.compute(), "test/ece": self.test_ece.compute()})
        self.test_per_class.reset()
        self.test_ece.reset()

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.predict_logits(batch[0]).softmax(dim=1)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of another backbone or class count is a clear error, not a state_dict size mismatch."""
        self.resumed_epoch_metrics = checkpoint.get(EPOCH_METRICS_KEY)
        saved = checkpoint.get("hyper_parameters")
        check_state_dict_fits(
            self,
            checkpoint["state_dict"],
            expected=f"backbone {self.hparams.backbone!r} with {self.hparams.num_classes} classes",
            found=f"backbone {saved.get('backbone')!r} with {saved.get('num_classes')} classes"
            if saved else "another network (no hyperparameters saved)",
        )

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.norm_lr_scale == 1.0 and not hp.no_decay_norm_bias:
            optimizer = self.optimizer(self.parameters())
        else:
            optimizer = self.optimizer(parameter_groups(self.backbone, hp.norm_lr_scale, hp.no_decay_norm_bias))
            apply_group_scales(optimizer)
        if self.lr_scheduler is None:
            return optimizer
        interval = self.hparams.scheduler_interval
        length = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
        scheduler = build_scheduler(self.lr_scheduler, optimizer, int(length))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": hp.scheduler_monitor}}


def load_classifier(ckpt_path: str | Path) -> ImageClassifier:
    """A checkpoint's model in eval mode on the CPU, for inference (``export``, ``visualize``, ``robustness``), with
    ``input_stats`` (for a checkpoint older than that hparam: its ``data.normalize`` of CIFAR-10, the only dataset
    then) and ``data_hparams``: the DataModule's arguments it was trained with.

    The file is read by ``load_checkpoint_file`` (``weights_only=True``), as ``test`` and ``predict`` read it
    through the CLI's checkpoint IO; keys that LightningCLI adds for its own re-instantiation start with ``_``.
    """
    checkpoint = load_checkpoint_file(ckpt_path)
    saved = checkpoint.get("hyper_parameters") or {}
    model = ImageClassifier(**{key: value for key, value in saved.items() if not key.startswith("_")})
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    model.data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    if model.input_stats is None:
        normalization = model.data_hparams.get("normalize", "dataset")
        model.input_stats = normalization_stats(normalization, RELEASES["cifar10"].stats)
    return model.eval()
