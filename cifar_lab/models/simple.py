"""The classic small CNN from CNN courses: three Conv3x3-ReLU-MaxPool blocks and an MLP head,
optionally with BatchNorm after every convolution, average pooling or strided convolutions in place
of max-pooling, and another (odd) kernel size."""

from typing import Literal

from torch import nn

from cifar_lab.errors import ConfigError
from cifar_lab.models.registry import register

Pool = Literal["max", "avg", "strided"]
# How each block halves the resolution: a 2x2 pooling after the ReLU, or (``strided``) its conv at stride 2,
# the "Strided-CNN" of Springenberg et al. (2015), with exactly the parameters of the pooling versions.
POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def conv_block(in_channels: int, out_channels: int, batch_norm: bool = False, pool: Pool = "max",
               kernel_size: int = 3) -> nn.Sequential:
    """Conv (no bias before BatchNorm, which would cancel it) [-BN] -ReLU-Pool; ``strided``: the conv at stride 2.
    The conv pads by ``kernel_size // 2``, so every odd kernel size keeps the resolution the pooling halves."""
    if pool not in (*POOLS, "strided"):
        raise ConfigError(f"unknown pool {pool!r}; choose one of {[*POOLS, 'strided']}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be an odd number >= 1 (1, 3, 5, 7, ...), got {kernel_size}")
    norm = [nn.BatchNorm2d(out_channels)] if batch_norm else []
    downsample = [POOLS[pool](2)] if pool in POOLS else []
    stride = 1 if pool in POOLS else 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=not batch_norm),
        *norm,
        nn.ReLU(inplace=True),
        *downsample,
    )


class SimpleCNN(nn.Module):
    """32x32 -> 4x4 after three blocks; 620,362 parameters for 10 classes with the defaults (any ``pool``)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128), hidden: int = 256,
                 dropout: float = 0.5, batch_norm: bool = False, pool: Pool = "max", kernel_size: int = 3) -> None:
        super().__init__()
        channels = (3, *widths)
        self.features = nn.Sequential(*(conv_block(i, o, batch_norm, pool, kernel_size)
                                        for i, o in zip(channels, channels[1:])))
        side = 32 // 2 ** len(widths)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[-1] * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register("simple_cnn")
def simple_cnn(num_classes: int = 10, **kwargs) -> SimpleCNN:
    return SimpleCNN(num_classes=num_classes, **kwargs)


@register("simple_cnn_bn")
def simple_cnn_bn(num_classes: int = 10, **kwargs) -> SimpleCNN:
    return SimpleCNN(num_classes=num_classes, batch_norm=True, **kwargs)
