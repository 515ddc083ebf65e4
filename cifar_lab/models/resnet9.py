"""ResNet-9 of the fast CIFAR-10 training records (Page, "How to train your ResNet", 2018).

Prep conv, then three stages that each double the width and max-pool; stages 1 and 3 add a
residual pair of conv-BN-ReLU. A global max-pool and a bias-free linear layer whose logits are
scaled by 1/8, which keeps them small while the learning rate is high.
"""

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from cifar_lab.models.registry import register


class Residual(nn.Module):
    """``x + conv_bn_relu(conv_bn_relu(x))``, with no activation after the addition."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(Conv2dNormActivation(channels, channels, 3), Conv2dNormActivation(channels, channels, 3))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def stage(in_channels: int, out_channels: int, residual: bool) -> nn.Sequential:
    layers: list[nn.Module] = [Conv2dNormActivation(in_channels, out_channels, 3), nn.MaxPool2d(2)]
    if residual:
        layers.append(Residual(out_channels))
    return nn.Sequential(*layers)


class FastResNet9(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 64, scale: float = 0.125) -> None:
        super().__init__()
        self.prep = Conv2dNormActivation(3, width, 3)
        self.layer1 = stage(width, 2 * width, residual=True)
        self.layer2 = stage(2 * width, 4 * width, residual=False)
        self.layer3 = stage(4 * width, 8 * width, residual=True)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes, bias=False)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.pool(x).flatten(1)) * self.scale


@register("fast_resnet9")
def fast_resnet9(num_classes: int = 10, **kwargs) -> FastResNet9:
    return FastResNet9(num_classes=num_classes, **kwargs)
