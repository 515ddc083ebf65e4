import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from cifar_lab.data import CIFAR10DataModule
from cifar_lab.module import ImageClassifier, accuracy_metrics
from cifar_lab.schedules import WarmupCosineLR, build_scheduler


def tiny_trainer(**kwargs) -> L.Trainer:
    options = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False}
    return L.Trainer(**{**options, **kwargs})


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
    dm = CIFAR10DataModule(str(npz_dir), download=False, batch_size=64, num_workers=0, val_size=50, augment="none")
    model = ImageClassifier("simple_cnn", backbone_kwargs={"dropout": 0.0},
                            optimizer=partial(torch.optim.Adam, lr=2e-3))
    trainer = tiny_trainer(max_epochs=25, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, dm)
    assert trainer.callback_metrics["train/acc"] >= 0.95
    assert trainer.callback_metrics["train/loss_epoch"] < 0.3


def test_accuracy_metrics_match_hand_computed_values() -> None:
    metrics = accuracy_metrics(10, "val/")
    targets = torch.tensor([0, 1, 2, 3])
    logits = torch.zeros(4, 10)
    logits[0, 0] = logits[1, 1] = logits[2, 2] = 5.0  # three right
    logits[3] = torch.arange(10, 0, -1).float()  # target 3 ranked 4th: in the top 5, not the top 1
    values = metrics(logits, targets)
    assert values["val/acc"] == pytest.approx(0.75)
    assert values["val/acc_top5"] == pytest.approx(1.0)


def test_test_metrics_include_per_class_accuracy_by_name(npz_dir: Path) -> None:
    dm = CIFAR10DataModule(str(npz_dir), download=False, batch_size=32, num_workers=0, val_size=50)
    model = ImageClassifier("simple_cnn", class_names=dm.classes)
    (results,) = tiny_trainer().test(model, dm, verbose=False)
    per_class = [results[f"test/acc_{name}"] for name in dm.classes]
    assert {"test/acc", "test/acc_top5", "test/loss"} <= results.keys()
    counts = torch.bincount(dm.datasets["test"].labels, minlength=10).float()
    assert results["test/acc"] == pytest.approx(float((torch.tensor(per_class) * counts).sum() / counts.sum()), abs=1e-5)


def test_warmup_cosine_follows_its_formula() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = WarmupCosineLR(optimizer, T_max=10, warmup=2)
    lrs = []
    for _ in range(11):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[10] == pytest.approx(0.0)


def test_schedule_length_is_filled_in_only_when_the_config_leaves_it_out() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    assert build_scheduler(partial(WarmupCosineLR, T_max=None), optimizer, 30).lr_lambdas[0] is not None
    one_cycle = build_scheduler(partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1), optimizer, 120)
    assert one_cycle.total_steps == 120
    given = build_scheduler(partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=7), optimizer, 120)
    assert given.total_steps == 7


@pytest.mark.parametrize(("interval", "expected"), [("epoch", 3), ("step", 3 * 4)])
def test_module_passes_the_length_of_training_to_the_schedule(npz_dir: Path, interval: str, expected: int) -> None:
    dm = CIFAR10DataModule(str(npz_dir), download=False, batch_size=64, num_workers=0, val_size=50)
    schedule = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1)
    model = ImageClassifier("simple_cnn", optimizer=partial(torch.optim.SGD, lr=0.1), lr_scheduler=schedule,
                            scheduler_interval=interval)
    trainer = tiny_trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model, dm)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == expected
    assert trainer.lr_scheduler_configs[0].interval == interval
