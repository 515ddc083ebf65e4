"""Every torch learning-rate schedule whose arguments are plain values works from a config: a fit steps it
as torch steps it by hand, and ReduceLROnPlateau watches the epoch metric the config names."""

import json
from pathlib import Path

import pytest
import torch

from cifar_lab.cli import build_cli
from cifar_lab.schedules import LENGTH_ARGUMENTS
from tests.helpers import NO_FIGURES, SMOKE

EPOCHS = 2
LR = 0.05  # configs/simple_cnn.yaml's SGD
SCHEDULES = [
    ("StepLR", {"step_size": 1, "gamma": 0.5}),
    ("MultiStepLR", {"milestones": [1], "gamma": 0.1}),
    ("ConstantLR", {"factor": 0.5, "total_iters": 3}),
    ("LinearLR", {"start_factor": 0.5, "total_iters": 4}),
    ("ExponentialLR", {"gamma": 0.9}),
    ("PolynomialLR", {"total_iters": 4, "power": 2.0}),
    ("CosineAnnealingLR", {"T_max": 4}),  # torch requires T_max (cifar_lab.schedules.WarmupCosineLR fills it in)
    ("CosineAnnealingWarmRestarts", {"T_0": 3}),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 1}),
    ("OneCycleLR", {"max_lr": 0.1}),  # total_steps: the length of training, filled in
]


def fit(tmp_path: Path, npz_dir: Path, monkeypatch: pytest.MonkeyPatch, schedule: str, init_args: dict,
        *options: str):
    monkeypatch.chdir(tmp_path)
    lr_scheduler = json.dumps({"class_path": f"torch.optim.lr_scheduler.{schedule}", "init_args": init_args})
    return build_cli(["fit", *SMOKE, *NO_FIGURES, "--data.data_dir", str(npz_dir), "--trainer.max_epochs", str(EPOCHS),
                      "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                      "--model.lr_scheduler", lr_scheduler, *options])


def stepped_by_hand(schedule: str, init_args: dict) -> float:
    """The learning rate after one optimizer and scheduler step per epoch, torch's own way."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR, momentum=0.9)
    scheduler_class = getattr(torch.optim.lr_scheduler, schedule)
    length = {name: EPOCHS for name in LENGTH_ARGUMENTS
              if name in scheduler_class.__init__.__code__.co_varnames and name not in init_args}
    scheduler = scheduler_class(optimizer, **init_args, **length)
    for _ in range(EPOCHS):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize(("schedule", "init_args"), SCHEDULES, ids=[name for name, _ in SCHEDULES])
def test_a_plain_valued_schedule_from_the_config_moves_the_learning_rate_as_torch_does(
        schedule: str, init_args: dict, npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = fit(tmp_path, npz_dir, monkeypatch, schedule, init_args)
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(stepped_by_hand(schedule, init_args))
    assert lr != pytest.approx(LR)  # it did move


def test_reduce_on_plateau_watches_the_configured_epoch_metric(npz_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # "better" means 10 points above the best so far: only the first epoch is, so the second one lowers the lr
    plateau = {"mode": "max", "patience": 0, "threshold": 10.0, "threshold_mode": "abs", "factor": 0.1}
    cli = fit(tmp_path, npz_dir, monkeypatch, "ReduceLROnPlateau", plateau, "--model.scheduler_monitor", "val/acc")
    assert cli.trainer.lr_scheduler_configs[0].monitor == "val/acc"
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * 0.1)
