"""DenseNet-BC (Huang et al. 2017) for 32x32 inputs, after torchvision's ``models/densenet.py``.

Every layer adds ``growth_rate`` feature maps to everything before it (BN-ReLU-Conv1x1 to
``bn_size * growth_rate`` bottleneck channels, then BN-ReLU-Conv3x3); transitions between dense
blocks halve the channels (compression 0.5) and the resolution. The CIFAR stem is one 3x3
stride-1 conv to ``2 * growth_rate`` channels, without max-pool.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cifar_lab.models.initialization import kaiming_init_
from cifar_lab.models.registry import register


def bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)]


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*bn_relu_conv(in_channels, bn_size * growth_rate, 1),
                                    *bn_relu_conv(bn_size * growth_rate, growth_rate, 3))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.layers(x)], dim=1)


class Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(*bn_relu_conv(in_channels, out_channels, 1), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(self, block_config: Sequence[int], growth_rate: int = 32, num_classes: int = 10, bn_size: int = 4,
                 compression: float = 0.5) -> None:
        super().__init__()
        channels = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
        for index, num_layers in enumerate(block_config):
            for _ in range(num_layers):
                layers.append(DenseLayer(channels, growth_rate, bn_size))
                channels += growth_rate
            if index < len(block_config) - 1:
                layers.append(Transition(channels, int(channels * compression)))
                channels = int(channels * compression)
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register("densenet121")
def densenet121(num_classes: int = 10, **kwargs) -> DenseNet:
    """Growth 32, blocks of 6/12/24/16 layers; 4x4 pixels reach the classifier."""
    return DenseNet([6, 12, 24, 16], growth_rate=32, num_classes=num_classes, **kwargs)


@register("densenet_bc_100")
def densenet_bc_100(num_classes: int = 10, **kwargs) -> DenseNet:
    """The paper's CIFAR net: depth 100 = 3 blocks x 16 bottleneck layers x 2 convs + 4, growth 12."""
    return DenseNet([16, 16, 16], growth_rate=12, num_classes=num_classes, **kwargs)
