"""Lookahead with a growing decay: the weights are pulled back towards a slow moving average.

Every ``every_n_steps`` optimizer steps the slow copy moves towards the current weights,
``slow = rho * slow + (1 - rho) * fast``, and the current weights are reset to it. ``rho`` grows
as ``decay * (step / total_steps) ** decay_power``: fast progress early, strong averaging late
(the fast CIFAR-10 recipes' choice; ``decay_power: 0`` is classic Lookahead with alpha = 1 - decay).
Floating-point buffers (BatchNorm statistics) are averaged too.
"""

from typing import Any

import lightning as L
import torch
from torch import Tensor

from cifar_lab.errors import ConfigError


class Lookahead(L.Callback):
    def __init__(self, every_n_steps: int = 5, decay: float = 0.95**5, decay_power: float = 3.0,
                 start_epoch: int = 0) -> None:
        if every_n_steps < 1:
            raise ConfigError(f"Lookahead.every_n_steps must be >= 1, got {every_n_steps}")
        if not 0 <= decay <= 1:
            raise ConfigError(f"Lookahead.decay must be in [0, 1], got {decay}")
        if decay_power < 0 or start_epoch < 0:
            raise ConfigError(f"Lookahead.decay_power and Lookahead.start_epoch must be >= 0, got {decay_power} "
                              f"and {start_epoch}")
        self.every_n_steps, self.decay, self.decay_power = every_n_steps, decay, decay_power
        self.start_epoch = start_epoch
        self.slow: dict[str, Tensor] | None = None

    def _float_state(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        return {k: v for k, v in pl_module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def _pull(self, pl_module: L.LightningModule, rho: float) -> None:
        fast = self._float_state(pl_module)
        for name, tensor in fast.items():
            if self.slow[name].device != tensor.device:  # restored from a checkpoint, which loads on the CPU
                self.slow[name] = self.slow[name].to(tensor.device)
        slow = [self.slow[name] for name in fast]
        # One multi-tensor kernel per operation rather than two per tensor: a fast recipe's step is short.
        torch._foreach_lerp_(slow, list(fast.values()), 1 - rho)
        torch._foreach_copy_(list(fast.values()), slow)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if trainer.current_epoch < self.start_epoch or step % self.every_n_steps:
            return
        if self.slow is None:
            self.slow = {k: v.detach().clone() for k, v in self._float_state(pl_module).items()}
            return
        rho = self.decay * (step / trainer.estimated_stepping_batches) ** self.decay_power
        self._pull(pl_module, rho)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.slow is not None:  # evaluate and checkpoint the averaged weights
            self._pull(pl_module, rho=1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.slow = state_dict["slow"]
