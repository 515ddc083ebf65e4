"""Regularisation knobs in training: MixUp/CutMix in the training step, gradient clipping, SWA from YAML."""

import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, StochasticWeightAveraging

from cifar_lab.cli import build_cli
from cifar_lab.data import ImageDataModule
from cifar_lab.data.resumable import sample_seed, seeded_rng
from cifar_lab.module import ImageClassifier
from tests.helpers import tiny_trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_data(npz_dir: Path) -> ImageDataModule:
    return ImageDataModule(str(npz_dir), download=False, batch_size=32, num_workers=0, val_size=50)


class RecordLabels(Callback):
    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.images.append(batch[0].clone())
        self.labels.append(batch[1].clone())


def test_mixed_batches_train_on_soft_targets_and_count_accuracy_on_the_hard_labels(
        npz_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    L.seed_everything(0)
    model = ImageClassifier("simple_cnn", mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)
    losses, metric_targets = [], []
    cross_entropy, update = F.cross_entropy, model.train_metrics.update

    def recording_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, **kwargs) -> torch.Tensor:
        loss = cross_entropy(logits, targets, **kwargs)
        losses.append((targets, kwargs, loss.detach()))
        return loss

    monkeypatch.setattr(F, "cross_entropy", recording_cross_entropy)
    monkeypatch.setattr(model.train_metrics, "update", lambda logits, targets: (metric_targets.append(targets),
                                                                                 update(logits, targets)))
    batches = RecordLabels()
    trainer = tiny_trainer(max_steps=3, limit_val_batches=0, callbacks=[batches])
    trainer.fit(model, tiny_data(npz_dir))
    assert trainer.global_step == len(losses) == len(batches.labels) == 3
    # the steps' labels reach the accuracy together, at the epoch's end: the images' own labels, not the mixed ones
    assert torch.equal(torch.cat(metric_targets), torch.cat(batches.labels))
    for step, ((soft, options, _), images, labels) in enumerate(zip(losses, batches.images, batches.labels)):
        with seeded_rng(sample_seed(0, 0, 0, step)):  # the mix is the seed's, the epoch's and the batch's alone
            assert torch.equal(model.batch_mix(images, labels)[1], soft)
        assert options == {"label_smoothing": 0.1}
        assert soft.shape == (32, 10) and soft.dtype == torch.float32
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(32))
        assert (soft[torch.arange(32), labels] > 0).all() and (soft.max(dim=1).values < 1).any()  # mixed, own label in
    mean_loss = torch.stack([loss for _, _, loss in losses]).mean()
    torch.testing.assert_close(trainer.callback_metrics["train/loss_epoch"], mean_loss)
    assert ImageClassifier("simple_cnn").batch_mix is None  # the default step does no mixing work


def update_size(npz_dir: Path, **trainer_options) -> float:
    """Length of the first SGD (lr 1, no momentum) update of all parameters together."""
    L.seed_everything(0)
    model = ImageClassifier("simple_cnn", backbone_kwargs={"dropout": 0.0}, optimizer=partial(torch.optim.SGD, lr=1.0))
    before = [p.detach().clone() for p in model.parameters()]
    tiny_trainer(max_steps=1, limit_val_batches=0, **trainer_options).fit(model, tiny_data(npz_dir))
    return float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before))))


def test_gradient_clip_val_bounds_the_norm_of_the_gradient(npz_dir: Path) -> None:
    assert update_size(npz_dir) > 0.1  # the gradient norm, with lr 1
    assert update_size(npz_dir, gradient_clip_val=1e-3) == pytest.approx(1e-3, rel=1e-3)


class WeightsAtEpochEnd(Callback):
    def __init__(self) -> None:
        self.weights: list[list[torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights.append([p.detach().clone() for p in pl_module.parameters()])


def test_swa_config_ends_with_the_average_of_the_last_epochs_weights(npz_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    cli = build_cli(["--config", str(CONFIGS / "simple_cnn.yaml"), "--config", str(CONFIGS / "swa.yaml"),
                     "--config", str(CONFIGS / "trainer/cpu.yaml"), "--data.data_dir", str(npz_dir),
                     "--data.num_workers", "0", "--data.val_size", "50", "--data.batch_size", "32",
                     "--trainer.max_epochs", "4", "--trainer.limit_train_batches", "2",
                     "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
                     "--trainer.logger", "false"], run=False)
    recorder = WeightsAtEpochEnd()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule)
    (swa,) = [c for c in cli.trainer.callbacks if isinstance(c, StochasticWeightAveraging)]
    # swa_epoch_start 0.75 of 4 epochs: Lightning averages the weights at the start of the 3rd and 4th epochs
    # (0-based 2 and 3), i.e. those at the ends of epochs 1 and 2
    assert int(swa.n_averaged) == 2
    final = [p.detach() for p in cli.model.parameters()]
    for param, after_1, after_2 in zip(final, recorder.weights[1], recorder.weights[2]):
        torch.testing.assert_close(param, (after_1 + after_2) / 2)
    assert not all(torch.equal(p, last) for p, last in zip(final, recorder.weights[3]))
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] != pytest.approx(0.0)  # SWALR, not the cosine's end
