import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

import cifar_lab.module as module_of_classifier
from cifar_lab.callbacks import ThrottledProgressBar
from cifar_lab.data import ImageDataModule
from cifar_lab.module import ImageClassifier, accuracy_metrics
from cifar_lab.optim import apply_group_scales
from cifar_lab.schedules import WarmupCosineLR, build_scheduler
from tests.helpers import CLASSES, learning_rates, read_scalars, tiny_trainer


def test_one_sgd_step_lowers_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = ImageClassifier("simple_cnn", optimizer=partial(torch.optim.SGD, lr=0.05)).eval()  # no dropout
    images, targets = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    optimizer = model.optimizer(model.parameters())
    before = torch.nn.functional.cross_entropy(model(images), targets)
    before.backward()
    optimizer.step()
    after = torch.nn.functional.cross_entropy(model(images), targets)
    assert after < before


def test_overfits_a_tiny_training_set(npz_dir: Path) -> None:
    L.seed_everything(0)
    dm = ImageDataModule(str(npz_dir), download=False, batch_size=64, num_workers=0, val_size=50, augment="none")
    model = ImageClassifier("simple_cnn", backbone_kwargs={"dropout": 0.0},
                            optimizer=partial(torch.optim.Adam, lr=2e-3))
    trainer = tiny_trainer(max_epochs=25, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, dm)
    assert trainer.callback_metrics["train/acc"] >= 0.95
    assert trainer.callback_metrics["train/loss_epoch"] < 0.3


class LogsEveryStep(ImageClassifier):
    """The usual Lightning way: every training step logs its loss and metrics (the reference for what is written)."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        self.train_metrics.update(logits, targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_start(self) -> None:
        pass


def test_training_writes_the_same_scalars_as_logging_every_step(npz_dir: Path, tmp_path: Path) -> None:
    written, logged = {}, {}
    for module in (ImageClassifier, LogsEveryStep):
        L.seed_everything(0)
        dm = ImageDataModule(str(npz_dir), download=False, batch_size=24, num_workers=0, val_size=50)
        logger = TensorBoardLogger(tmp_path, name=module.__name__)
        trainer = tiny_trainer(max_epochs=2, limit_train_batches=5, limit_val_batches=0, log_every_n_steps=2,
                               logger=logger)
        trainer.fit(module("simple_cnn", backbone_kwargs={"dropout": 0.0}), dm)
        written[module] = {tag: read_scalars(logger.log_dir, tag) for tag in ("train/loss_step", "train/loss_epoch",
                                                                             "train/acc")}
        logged[module] = dict(trainer.logged_metrics)
    ours, reference = written[ImageClassifier], written[LogsEveryStep]
    assert list(ours["train/loss_step"]) == list(reference["train/loss_step"]) == [1, 3, 5, 7, 9]
    for tag, values in reference.items():
        assert ours[tag] == pytest.approx(values, rel=1e-5), tag
    assert len(ours["train/loss_epoch"]) == len(ours["train/acc"]) == 2
    assert logged[ImageClassifier].keys() == logged[LogsEveryStep].keys()  # trainer.logged_metrics as Lightning's
    assert logged[ImageClassifier]["train/loss_step"] == pytest.approx(logged[LogsEveryStep]["train/loss_step"])


def test_waiting_steps_join_the_training_metrics_each_counted_by_its_images() -> None:
    model = ImageClassifier("simple_cnn")
    labels = torch.tensor([0, 1, 2, 3])
    model.waiting_steps = [(torch.tensor([0, 1, 2, 0]), labels, torch.tensor(1.0)),  # 3 of 4 right
                           (torch.tensor([5, 5]), torch.tensor([5, 4]), torch.tensor(3.0)),  # 1 of 2, a smaller batch
                           (labels, labels, torch.tensor(2.0))]  # 4 of 4
    model._update_train_metrics()
    assert model.waiting_steps == []
    assert model.train_metrics.compute()["train/acc"].item() == pytest.approx(8 / 10)
    assert model.train_loss.compute().item() == pytest.approx((4 * 1.0 + 2 * 3.0 + 4 * 2.0) / 10)


def test_training_metrics_are_updated_every_n_steps_and_where_an_epoch_or_the_run_ends(
        npz_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module_of_classifier, "TRAIN_METRICS_EVERY_N_STEPS", 3)
    model, updates = ImageClassifier("simple_cnn"), []
    update = model.train_metrics.update
    monkeypatch.setattr(model.train_metrics, "update",
                        lambda predictions, targets: (updates.append((model.global_step, len(targets))),
                                                      update(predictions, targets)))
    dm = ImageDataModule(str(npz_dir), download=False, batch_size=24, num_workers=0, val_size=50)
    trainer = tiny_trainer(max_steps=7, limit_train_batches=5, limit_val_batches=0)
    trainer.fit(model, dm)
    # (step, images): steps 1-3 at step 3; 4-5 at the first epoch's end; 6 at step 6; 7 where max_steps ends the run
    assert updates == [(3, 72), (5, 48), (6, 24), (7, 24)]
    assert model.waiting_steps == []


class ItemCalls(L.Callback):
    """The number of ``Tensor.item`` calls made so far, at each training batch's end."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls, self.at_batch_end = 0, []
        item = torch.Tensor.item
        monkeypatch.setattr(torch.Tensor, "item", lambda tensor: (self._count(), item(tensor))[1])

    def _count(self) -> None:
        self.calls += 1

    def on_train_batch_end(self, *args) -> None:
        self.at_batch_end.append(self.calls)


def test_a_training_step_reads_no_value_back_to_the_host_while_the_bar_shows_the_loss_at_redraws(
        npz_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, each ``.item()`` waits for the device; Lightning makes one a step for each ``prog_bar=True`` value."""
    dm = ImageDataModule(str(npz_dir), download=False, batch_size=32, num_workers=0, val_size=50)
    bar, reads = ThrottledProgressBar(redraws_per_second=1e-9), ItemCalls(monkeypatch)  # redraws: first, last batch
    trainer = tiny_trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=0, log_every_n_steps=2,
                           enable_progress_bar=True, callbacks=[reads, bar])
    model = ImageClassifier("simple_cnn", optimizer=partial(torch.optim.SGD, lr=0.01))  # Adam reads its step count
    trainer.fit(model, dm)
    assert reads.at_batch_end[4] - reads.at_batch_end[0] == 0  # batches 2-5, three of them logging the loss
    assert "train/loss_step" not in trainer.progress_bar_metrics
    shown = bar.get_metrics(trainer, model)["train/loss_step"]
    assert shown == model.step_metrics["train/loss_step"].item()  # step 6's, kept on the device


def test_accuracy_metrics_match_hand_computed_values() -> None:
    metrics = accuracy_metrics(10, "val/")
    targets = torch.tensor([0, 1, 2, 3])
    logits = torch.zeros(4, 10)
    logits[0, 0] = logits[1, 1] = logits[2, 2] = 5.0  # three right
    logits[3] = torch.arange(10, 0, -1).float()  # target 3 ranked 4th: in the top 5, not the top 1
    values = metrics(logits, targets)
    assert values["val/acc"] == pytest.approx(0.75)
    assert values["val/acc_top5"] == pytest.approx(1.0)


class LogitsInTheFirstRow(torch.nn.Module):
    """A backbone that outputs what its input holds: each test image carries its logits."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, 0, :10]


def test_test_metrics_include_per_class_accuracy_by_name() -> None:
    # Four images of each class; class c is recognised in 4, 3, 2, 1, 0, 4, 3, ... of them. A miss
    # predicts the next class and ranks the right one second: still in the top 5.
    labels = torch.arange(10).repeat_interleave(4)
    right = torch.tensor([4, 3, 2, 1, 0] * 2)
    hits = torch.arange(4).repeat(10) < right.repeat_interleave(4)
    logits = torch.zeros(40, 10)
    logits[torch.arange(40), labels] = torch.where(hits, 1.0, 0.5)
    logits[torch.arange(40)[~hits], (labels[~hits] + 1) % 10] = 1.0
    images = torch.zeros(40, 3, 32, 32)
    images[:, 0, 0, :10] = logits
    model = ImageClassifier("simple_cnn", class_names=CLASSES)
    model.backbone = LogitsInTheFirstRow()
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    (results,) = tiny_trainer().test(model, loader, verbose=False)
    # Every softmax confidence is e / (e + 9) = 0.232 (a hit) or e / (e + e^0.5 + 8) = 0.220 (a miss): all in the
    # bin [0.2, 0.267), so the ECE is |accuracy - mean confidence| (taken as probabilities, logits in [0, 1] give 0.5).
    confidence = float(logits.softmax(dim=1).max(dim=1).values.mean())
    assert results == pytest.approx({
        "test/acc": 20 / 40, "test/acc_top5": 1.0, "test/ece": abs(20 / 40 - confidence),
        "test/loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        **{f"test/acc_{name}": n / 4 for name, n in zip(CLASSES, right.tolist())},
    })


def test_warmup_cosine_follows_its_formula() -> None:
    lrs = learning_rates(partial(WarmupCosineLR, T_max=10, warmup=2), 11)
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[10] == pytest.approx(0.0)


def test_schedule_length_is_filled_in_only_when_the_config_leaves_it_out() -> None:
    filled = learning_rates(lambda optimizer: build_scheduler(partial(WarmupCosineLR, T_max=None), optimizer, 30), 31)
    assert filled[0] == 1.0 and filled[15] == pytest.approx(0.5) and filled[30] == pytest.approx(0.0)  # cosine over 30
    kept = learning_rates(lambda optimizer: build_scheduler(partial(WarmupCosineLR, T_max=10), optimizer, 30), 11)
    assert kept[5] == pytest.approx(0.5) and kept[10] == pytest.approx(0.0)  # cosine over 10
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    one_cycle = build_scheduler(partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1), optimizer, 120)
    assert one_cycle.total_steps == 120
    given = build_scheduler(partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=7), optimizer, 120)
    assert given.total_steps == 7


def test_schedules_that_set_absolute_rates_keep_each_groups_lr_scale() -> None:
    weight, norm = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([{"params": [weight], "lr_scale": 1.0}, {"params": [norm], "lr_scale": 64.0}], lr=0.1)
    apply_group_scales(optimizer)
    one_cycle = build_scheduler(partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, div_factor=25.0),
                                optimizer, 10)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.1 / 25, 6.4 / 25])
    for _ in range(2):  # the peak of the default 30% warm-up: step 0.3 * 10 - 1
        optimizer.step()
        one_cycle.step()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.1, 6.4])
    optimizer = torch.optim.SGD([{"params": [weight], "lr_scale": 1.0}, {"params": [norm], "lr_scale": 4.0}], lr=0.1,
                                momentum=0.9)
    build_scheduler(partial(torch.optim.lr_scheduler.CyclicLR, base_lr=0.01, max_lr=0.1), optimizer, 10)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.01, 0.04])


@pytest.mark.parametrize(("interval", "expected"), [("epoch", 3), ("step", 3 * 4)])
def test_module_passes_the_length_of_training_to_the_schedule(npz_dir: Path, interval: str, expected: int) -> None:
    dm = ImageDataModule(str(npz_dir), download=False, batch_size=64, num_workers=0, val_size=50)
    schedule = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1)
    model = ImageClassifier("simple_cnn", optimizer=partial(torch.optim.SGD, lr=0.1), lr_scheduler=schedule,
                            scheduler_interval=interval)
    trainer = tiny_trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model, dm)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == expected
    assert trainer.lr_scheduler_configs[0].interval == interval
