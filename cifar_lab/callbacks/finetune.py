"""Transfer learning: train only the new head first, then (optionally) the whole network.

Lightning's ``BackboneFinetuning`` freezes ``pl_module.backbone`` as a whole, but here the backbone
module also holds the classification head, so ``HeadFirstFinetuning`` freezes everything except
the head (the last linear layer) through the same ``BaseFinetuning`` machinery.
"""

from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from cifar_lab.errors import ConfigError


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The qualified name and module of the classification head: the last ``nn.Linear``."""
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear head to train first")
    return linears[-1]


class HeadFirstFinetuning(BaseFinetuning):
    """Freeze the pretrained layers (batch-norm statistics included) while the head learns.

    The ImageClassifier's optimizer already holds every parameter; frozen ones get no gradient and
    are skipped, so at ``unfreeze_at_epoch`` they train at the optimizer's learning rate.

    Args:
        freeze: ``backbone`` trains only the head at first; ``none`` trains everything from the start.
        unfreeze_at_epoch: the epoch (0-based) from which the whole network trains; null keeps the
            backbone frozen for the whole run.
    """

    def __init__(self, freeze: Literal["backbone", "none"] = "backbone", unfreeze_at_epoch: int | None = None) -> None:
        super().__init__()
        if freeze not in ("backbone", "none"):
            raise ConfigError(f"freeze must be 'backbone' or 'none', got {freeze!r}")
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0:
            raise ConfigError(f"unfreeze_at_epoch must be >= 0 or null, got {unfreeze_at_epoch}")
        self.freeze_backbone = freeze == "backbone"
        self.unfreeze_at_epoch = unfreeze_at_epoch

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        if self.freeze_backbone:
            self.freeze(pl_module.backbone, train_bn=False)
            self.make_trainable(last_linear(pl_module.backbone)[1])

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        # ">=": a run resumed after the unfreezing epoch trains the whole network too.
        if self.freeze_backbone and self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch:
            self.make_trainable(pl_module.backbone)
