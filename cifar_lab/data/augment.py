"""Augmentation from torchvision.transforms.v2: named per-image presets, random erasing after
normalisation, and MixUp/CutMix of whole training batches.

Presets apply to the training split only; every split ends with the same uint8 -> float
conversion and normalisation (``data.normalize``), so val/test see exactly what the model expects.
"""

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torchvision.transforms import v2

from cifar_lab.errors import ConfigError

# Per-channel statistics of the 50,000 CIFAR-10 training images (pixels scaled to [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

Erasing = Literal["cutout", "random_erasing"]
Normalization = Literal["dataset", "half", "none"]
# (mean, std) per channel of each ``data.normalize`` choice: the CIFAR-10 training set's statistics (pixels
# centred per channel); 0.5 and 0.5, which puts pixels in [-1, 1] as many tutorials do; none: pixels in [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "dataset": (CIFAR10_MEAN, CIFAR10_STD),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def crop_flip() -> list[v2.Transform]:
    """The standard CIFAR augmentation: random 32x32 crop of the 4-pixel zero-padded image, mirror with p=0.5."""
    return [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]


# The policy-based presets run after crop + flip, as in the AutoAugment/RandAugment/TrivialAugment CIFAR recipes.
PRESETS: dict[str, Callable[[], list[v2.Transform]]] = {
    "none": lambda: [],
    "standard": crop_flip,
    "color": lambda: [*crop_flip(), v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
                      v2.RandomRotation(10)],
    "autoaugment": lambda: [*crop_flip(), v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)],
    "randaugment": lambda: [*crop_flip(), v2.RandAugment()],
    "trivialaugment": lambda: [*crop_flip(), v2.TrivialAugmentWide()],
}

# After normalisation, where 0 is the mean colour. Cutout (DeVries & Taylor): one 16x16 square per image,
# here always inside the image; random_erasing: torchvision's defaults (p=0.5, 2-33% of the area, any aspect).
ERASING: dict[str, Callable[[], v2.Transform]] = {
    "cutout": lambda: v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0.0),
    "random_erasing": lambda: v2.RandomErasing(),
}


def normalization_stats(normalization: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a ``data.normalize`` choice; an unknown one is a ``ConfigError`` listing the choices."""
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalize {normalization!r}; choose one of {sorted(NORMALIZATIONS)}")
    return NORMALIZATIONS[normalization]


def normalize(normalization: str = "dataset") -> list[v2.Transform]:
    """uint8 image -> normalised float32, the last step for every split."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(*normalization_stats(normalization))]


def build_transform(augment: str | Sequence[v2.Transform], train: bool, erasing: Erasing | None = None,
                    normalization: str = "dataset") -> v2.Compose:
    """The preset's (or the given list's) augmentation and erasing (training only) around normalisation."""
    if isinstance(augment, str) and augment not in PRESETS:
        raise ConfigError(f"unknown augment preset {augment!r}; choose one of {sorted(PRESETS)} "
                          f"or give a list of transforms (class_path/init_args)")
    if erasing is not None and erasing not in ERASING:
        raise ConfigError(f"unknown erasing {erasing!r}; choose one of {sorted(ERASING)} or null")
    if not train:
        return v2.Compose(normalize(normalization))
    transforms = PRESETS[augment]() if isinstance(augment, str) else list(augment)
    return v2.Compose([*transforms, *normalize(normalization), *([ERASING[erasing]()] if erasing else [])])


def batch_mix(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              prob: float = 1.0) -> v2.Transform | None:
    """MixUp and/or CutMix of a whole batch ``(images, labels) -> (images, soft labels)``, or None when both are off.

    With both on, each batch gets one of the two at random; ``prob`` is the chance that a batch is mixed at
    all (an unmixed batch keeps its class-index labels, which the cross-entropy takes as well).
    """
    for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0 (0 turns it off), got {value}")
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"mix_prob must be between 0 and 1, got {prob}")
    mixes = [mix(alpha=alpha, num_classes=num_classes)
             for mix, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha)) if alpha > 0]
    if not mixes or prob == 0.0:
        return None
    mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
    return mix if prob == 1.0 else v2.RandomApply([mix], p=prob)
