"""Inverted-residual (MBConv) networks for 32x32 inputs: MobileNetV2 and a small EfficientNet-style net.

Both are one ``MBConvNet`` over a table of stages; only the table, the activation and
squeeze-and-excitation differ. The CIFAR versions keep stride 1 in the stem and in the early
stages that ImageNet versions use to shrink 224x224 inputs, so the last stage still sees 4x4 pixels.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation

from cifar_lab.models.initialization import kaiming_init_
from cifar_lab.models.registry import register


class Stage(NamedTuple):
    expand_ratio: int
    channels: int
    repeats: int
    stride: int
    kernel_size: int = 3


# MobileNetV2 (Sandler et al. 2018, table 2) with the first two strides of 2 set to 1 for CIFAR.
MOBILENET_V2_STAGES = [Stage(1, 16, 1, 1), Stage(6, 24, 2, 1), Stage(6, 32, 3, 2), Stage(6, 64, 4, 2),
                       Stage(6, 96, 3, 1), Stage(6, 160, 3, 2), Stage(6, 320, 1, 1)]
# EfficientNet-B0's kernels and widths (Tan & Le 2019) with fewer repeats and CIFAR strides.
MBCONV_NET_STAGES = [Stage(1, 16, 1, 1, 3), Stage(6, 24, 2, 1, 3), Stage(6, 40, 2, 2, 5), Stage(6, 80, 2, 2, 3),
                     Stage(6, 112, 2, 1, 5), Stage(6, 192, 2, 2, 5), Stage(6, 320, 1, 1, 3)]


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expansion, depthwise kxk carrying the stride, optional SE, linear 1x1 projection.

    The shortcut is the identity, present only where stride and channels are unchanged (MobileNetV2).
    SE squeezes to ``se_ratio`` x the block's input channels, as in EfficientNet.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, kernel_size: int = 3,
                 se_ratio: float = 0.0, activation: Callable[..., nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(in_channels, hidden, 1, activation_layer=activation))
        layers.append(Conv2dNormActivation(hidden, hidden, kernel_size, stride=stride, groups=hidden,
                                           activation_layer=activation))
        if se_ratio > 0:
            layers.append(SqueezeExcitation(hidden, max(1, int(in_channels * se_ratio)), activation=activation))
        layers.append(Conv2dNormActivation(hidden, out_channels, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_shortcut else out


class MBConvNet(nn.Module):
    """3x3 stem, the stages of inverted-residual blocks, 1x1 conv to ``head_channels``, pool, dropout, linear."""

    def __init__(self, stages: Sequence[Stage], num_classes: int = 10, stem_channels: int = 32,
                 head_channels: int = 1280, activation: Callable[..., nn.Module] = nn.ReLU6, se_ratio: float = 0.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [Conv2dNormActivation(3, stem_channels, 3, activation_layer=activation)]
        in_channels = stem_channels
        for stage in stages:
            for index in range(stage.repeats):
                stride = stage.stride if index == 0 else 1
                layers.append(InvertedResidual(in_channels, stage.channels, stride, stage.expand_ratio,
                                               stage.kernel_size, se_ratio, activation))
                in_channels = stage.channels
        layers.append(Conv2dNormActivation(in_channels, head_channels, 1, activation_layer=activation))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_channels, num_classes))
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register("mobilenet_v2")
def mobilenet_v2(num_classes: int = 10, **kwargs) -> MBConvNet:
    return MBConvNet(MOBILENET_V2_STAGES, num_classes=num_classes, **kwargs)


@register("mbconv_net")
def mbconv_net(num_classes: int = 10, **kwargs) -> MBConvNet:
    """EfficientNet-style: SiLU activations and SE (squeeze to 1/4 of the block input) in every block."""
    return MBConvNet(MBCONV_NET_STAGES, num_classes=num_classes, activation=nn.SiLU, se_ratio=0.25, **kwargs)
