"""Named augmentation presets built from torchvision.transforms.v2.

Presets apply to the training split only; every split ends with the same uint8 -> float
conversion and CIFAR-10 normalisation, so val/test see exactly what the model expects.
"""

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from cifar_lab.errors import ConfigError

# Per-channel statistics of the 50,000 CIFAR-10 training images (pixels scaled to [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

PRESETS: dict[str, Callable[[], list[v2.Transform]]] = {
    "none": lambda: [],
    "standard": lambda: [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()],
}


def normalize() -> list[v2.Transform]:
    """uint8 image -> normalised float32, the last step for every split."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)]


def build_transform(preset: str, train: bool) -> v2.Compose:
    """The preset's augmentation (training only) followed by normalisation."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown augment preset {preset!r}; choose one of {sorted(PRESETS)}")
    augment = PRESETS[preset]() if train else []
    return v2.Compose([*augment, *normalize()])
