"""Learning-rate schedules that need the length of training, and how the module supplies it.

A schedule given in YAML as ``lr_scheduler: {class_path: ..., init_args: ...}`` reaches the
module as a factory ``optimizer -> scheduler``. Cosine and one-cycle schedules need the number
of epochs or steps; if the config leaves ``T_max`` / ``total_steps`` out, the module fills it in
from the Trainer, so the same recipe stays right when ``max_epochs`` or the batch size changes.
``ReduceLROnPlateau`` steps on a metric the module logs once per epoch (``model.scheduler_monitor``),
checked by ``check_schedule`` before training. (Schedules built from other schedules, such as
``SequentialLR``, cannot be written as YAML values: the config parser refuses them, naming the argument.)
"""

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cifar_lab.errors import ConfigError

LENGTH_ARGUMENTS = ("T_max", "total_steps")
ABSOLUTE_RATE_ARGUMENTS = ("max_lr", "base_lr")  # rates a schedule sets outright, not as factors of the group's
# Metrics the module logs once per epoch, which ReduceLROnPlateau can watch; "max" for accuracies.
PLATEAU_MONITORS = {"val/loss": "min", "val/acc": "max", "train/loss_epoch": "min", "train/acc": "max"}


def check_schedule(class_path: str, init_args: dict[str, Any], monitor: str, interval: str,
                   validates: bool) -> None:
    """Refuse, before training, a ReduceLROnPlateau that Lightning would reject only once it steps, or that
    would lower the learning rate while its metric improves."""
    name = class_path.rpartition(".")[2]
    if name != "ReduceLROnPlateau":
        return
    if monitor not in PLATEAU_MONITORS:
        raise ConfigError(f"model.scheduler_monitor {monitor!r} is not logged once per epoch; ReduceLROnPlateau can "
                          f"watch one of {sorted(PLATEAU_MONITORS)}")
    if monitor.startswith("val/") and not validates:
        raise ConfigError(f"ReduceLROnPlateau watches {monitor}, but this run has no validation (data.val_size 0 or "
                          f"trainer.limit_val_batches 0); set --model.scheduler_monitor train/loss_epoch")
    mode = init_args.get("mode", "min")
    if mode != PLATEAU_MONITORS[monitor]:
        raise ConfigError(f"ReduceLROnPlateau on {monitor} needs mode: {PLATEAU_MONITORS[monitor]} (got {mode!r}), "
                          f"or it lowers the learning rate while {monitor} improves")
    if interval != "epoch":
        raise ConfigError("ReduceLROnPlateau steps once per epoch, on an epoch's metric: set "
                          "model.scheduler_interval: epoch")


class WarmupCosineLR(LambdaLR):
    """Linear warm-up over ``warmup`` intervals, then cosine decay to ``eta_min_ratio * lr`` at ``T_max``.

    ``T_max`` may be left out of a config: the module passes the length of training.
    """

    def __init__(self, optimizer: Optimizer, T_max: int | None = None, warmup: int = 0,
                 eta_min_ratio: float = 0.0, last_epoch: int = -1) -> None:
        if T_max is None:
            raise ValueError("WarmupCosineLR needs T_max (the module fills it in from the Trainer)")
        decay = max(1, T_max - warmup)  # a run shorter than the warm-up (a smoke test) just warms up

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / decay)
            return eta_min_ratio + (1 - eta_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        super().__init__(optimizer, factor, last_epoch)


def _target(factory: Callable[..., Any]) -> Callable[..., Any]:
    """What a factory builds: jsonargparse gives ``partial(..., SchedulerClass, **init_args)``."""
    if isinstance(factory, functools.partial):
        return next((arg for arg in factory.args if inspect.isclass(arg)), factory.func)
    return factory


def build_scheduler(factory: Callable[..., Any], optimizer: Optimizer, length: int) -> Any:
    """Call ``factory(optimizer)``, passing ``length`` as ``T_max``/``total_steps`` when the config leaves it unset.

    Schedules that set absolute learning rates (``OneCycleLR``'s and ``CyclicLR``'s ``max_lr``/``base_lr``)
    get one rate per parameter group, scaled by the group's ``lr_scale`` (``model.norm_lr_scale``), as the
    optimizer's own rates are.
    """
    given = factory.keywords if isinstance(factory, functools.partial) else {}
    try:
        parameters = inspect.signature(_target(factory)).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature: call it as it is
        parameters = {}
    fill: dict[str, Any] = {name: length for name in LENGTH_ARGUMENTS if name in parameters and given.get(name) is None}
    scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    if any(scale != 1.0 for scale in scales):
        for name in ABSOLUTE_RATE_ARGUMENTS:
            if name in parameters and isinstance(given.get(name), (int, float)):
                fill[name] = [given[name] * scale for scale in scales]
    return factory(optimizer, **fill)


class PiecewiseLinearLR(LambdaLR):
    """Learning-rate factor interpolated linearly between (fraction of training, factor) points.

    E.g. ``milestones: [0, 0.23, 1]`` and ``factors: [0.2, 1, 0.07]`` is the triangular schedule of
    the fast CIFAR-10 recipes. ``total_steps`` may be left out of a config (the module fills it in).
    """

    def __init__(self, optimizer: Optimizer, milestones: list[float], factors: list[float],
                 total_steps: int | None = None, last_epoch: int = -1) -> None:
        if total_steps is None:
            raise ValueError("PiecewiseLinearLR needs total_steps (the module fills it in from the Trainer)")
        if len(milestones) != len(factors) or sorted(milestones) != list(milestones):
            raise ValueError("milestones must be increasing and as many as factors")

        def factor(step: int) -> float:
            progress = step / total_steps
            for (x0, y0), (x1, y1) in zip(zip(milestones, factors), zip(milestones[1:], factors[1:])):
                if progress <= x1:
                    return y0 + (y1 - y0) * (progress - x0) / max(x1 - x0, 1e-12)
            return factors[-1]

        super().__init__(optimizer, factor, last_epoch)
