"""Checks on a parsed config that Lightning and torch would otherwise answer late or not at all.

Each one turns a mistake into a one-line ``CifarLabError`` before any data is read: a run with zero
epochs or a non-positive learning rate would "succeed" without learning, and fp16 autocast on the
CPU would silently run in another precision than the saved config says. bf16 on a CPU without bf16
instructions is allowed but slow, so it gets a warning.
"""

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities import rank_zero_warn

from cifar_lab import precision
from cifar_lab.errors import ConfigError
from cifar_lab.schedules import check_schedule


def check_fit_config(config: Namespace) -> None:
    """Training length and learning rate must be able to train something."""
    max_epochs = config.trainer.max_epochs
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1 (or -1 for no limit), got {max_epochs}")
    init_args = getattr(config.model.optimizer, "init_args", None)
    lr = init_args.get("lr") if init_args is not None else None
    if isinstance(lr, (int, float)) and lr <= 0:
        raise ConfigError(f"model.optimizer.init_args.lr must be > 0, got {lr}")
    schedule = config.model.lr_scheduler
    if schedule is not None and getattr(schedule, "class_path", None):
        validates = config.data.val_size != 0 and config.trainer.limit_val_batches != 0
        check_schedule(schedule.class_path, dict(schedule.get("init_args") or {}), config.model.scheduler_monitor,
                       config.model.scheduler_interval, validates)


def check_precision(trainer: Trainer, requested: str | int | None) -> None:
    """fp16 autocast needs a GPU; Lightning would quietly switch the CPU to bf16 instead."""
    if not isinstance(trainer.accelerator, CPUAccelerator):
        return
    if str(requested) in ("16", "16-mixed"):
        raise ConfigError(
            f"trainer.precision={requested} needs a GPU (fp16 autocast does not run on the CPU); on the CPU use "
            f"--trainer.precision bf16-mixed or 32-true"
        )
    if str(requested) in ("bf16", "bf16-mixed") and not precision.cpu_has_bf16():
        rank_zero_warn(f"trainer.precision={requested}: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so "
                       f"bf16 is emulated and usually slower than fp32; --trainer.precision 32-true is faster here")
