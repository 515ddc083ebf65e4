"""Random number generator states in the checkpoint, so a resumed run continues the same random stream."""

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class RandomStateCheckpoint(Callback):
    """Save torch's CPU (and CUDA) generator states with each checkpoint and restore them on resume.

    Lightning restores weights, optimizer and loop counters but not the generators, so after
    resuming, the shuffling order and the augmentations of the remaining epochs would differ from
    an uninterrupted run. Only torch's generators are kept: data order, augmentation and
    initialisation in cifar_lab draw from them alone (tensors keep the checkpoint weights_only-loadable).
    """

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["torch.cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if "torch.cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["torch.cuda"])
