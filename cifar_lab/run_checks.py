"""Checks on a parsed config that Lightning and torch would otherwise answer late or not at all.

Each one turns a mistake into a one-line ``CifarLabError`` before any data is read: a run with zero
epochs or a non-positive learning rate would "succeed" without learning, and fp16 autocast on the
CPU would silently run in another precision than the saved config says.
"""

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator

from cifar_lab.errors import ConfigError


def check_fit_config(config: Namespace) -> None:
    """Training length and learning rate must be able to train something."""
    max_epochs = config.trainer.max_epochs
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1 (or -1 for no limit), got {max_epochs}")
    init_args = getattr(config.model.optimizer, "init_args", None)
    lr = init_args.get("lr") if init_args is not None else None
    if isinstance(lr, (int, float)) and lr <= 0:
        raise ConfigError(f"model.optimizer.init_args.lr must be > 0, got {lr}")


def check_precision(trainer: Trainer, requested: str | int | None) -> None:
    """fp16 autocast needs a GPU; Lightning would quietly switch the CPU to bf16 instead."""
    if isinstance(trainer.accelerator, CPUAccelerator) and str(requested) in ("16", "16-mixed"):
        raise ConfigError(
            f"trainer.precision={requested} needs a GPU (fp16 autocast does not run on the CPU); on the CPU use "
            f"--trainer.precision bf16-mixed or 32-true"
        )
