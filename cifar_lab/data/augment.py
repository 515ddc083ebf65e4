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

Erasing = Literal["cutout", "random_erasing"]
Normalization = Literal["dataset", "half", "none"]
ChannelStats = Sequence[Sequence[float]]  # per-channel (mean, std) of pixels scaled to [0, 1]
# (mean, std) of the ``data.normalize`` choices that do not depend on the data: 0.5 and 0.5, which puts pixels in
# [-1, 1] as many tutorials do; none: pixels in [0, 1]. ``dataset`` is the training set's own statistics.
FIXED_NORMALIZATIONS: dict[str, ChannelStats] = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def crop_flip(size: int = 32) -> list[v2.Transform]:
    """The standard CIFAR augmentation: random crop of the image zero-padded by an eighth of its side (4 pixels at
    32x32), mirror with p=0.5."""
    return [v2.RandomCrop(size, padding=size // 8), v2.RandomHorizontalFlip()]


# The policy-based presets run after crop + flip, as in the AutoAugment/RandAugment/TrivialAugment CIFAR recipes.
# Each takes the image side.
PRESETS: dict[str, Callable[[int], list[v2.Transform]]] = {
    "none": lambda size: [],
    "standard": crop_flip,
    "color": lambda size: [*crop_flip(size), v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
                           v2.RandomRotation(10)],
    "autoaugment": lambda size: [*crop_flip(size), v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)],
    "randaugment": lambda size: [*crop_flip(size), v2.RandAugment()],
    "trivialaugment": lambda size: [*crop_flip(size), v2.TrivialAugmentWide()],
}

# After normalisation, where 0 is the mean colour. Cutout (DeVries & Taylor): one 16x16 square per image,
# here always inside the image; random_erasing: torchvision's defaults (p=0.5, 2-33% of the area, any aspect).
ERASING: dict[str, Callable[[], v2.Transform]] = {
    "cutout": lambda: v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0.0),
    "random_erasing": lambda: v2.RandomErasing(),
}


def normalization_stats(normalization: str, dataset_stats: ChannelStats) -> ChannelStats:
    """(mean, std) of a ``data.normalize`` choice, ``dataset`` being ``dataset_stats``; an unknown choice is a
    ``ConfigError`` listing them."""
    if normalization == "dataset":
        return dataset_stats
    if normalization not in FIXED_NORMALIZATIONS:
        choices = sorted(["dataset", *FIXED_NORMALIZATIONS])
        raise ConfigError(f"unknown normalize {normalization!r}; choose one of {choices}")
    return FIXED_NORMALIZATIONS[normalization]


def normalize(stats: ChannelStats) -> list[v2.Transform]:
    """uint8 image -> normalised float32, the last step for every split."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)]


def build_transform(augment: str | Sequence[v2.Transform], train: bool, stats: ChannelStats,
                    erasing: Erasing | None = None, size: int = 32) -> v2.Compose:
    """The preset's (or the given list's) augmentation of ``size`` x ``size`` images and erasing (training only)
    around normalisation with ``stats``."""
    if isinstance(augment, str) and augment not in PRESETS:
        raise ConfigError(f"unknown augment preset {augment!r}; choose one of {sorted(PRESETS)} "
                          f"or give a list of transforms (class_path/init_args)")
    if erasing is not None and erasing not in ERASING:
        raise ConfigError(f"unknown erasing {erasing!r}; choose one of {sorted(ERASING)} or null")
    if not train:
        return v2.Compose(normalize(stats))
    transforms = PRESETS[augment](size) if isinstance(augment, str) else list(augment)
    return v2.Compose([*transforms, *normalize(stats), *([ERASING[erasing]()] if erasing else [])])


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
