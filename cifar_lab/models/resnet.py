"""ResNets for 32x32 inputs, after torchvision's ``models/resnet.py``.

CIFAR stem: one 3x3 stride-1 convolution and no max-pool, so the 4 stages see 32/16/8/4 pixels.
Shortcuts are 1x1 projections (conv + BN) where the shape changes. The same ``ResNet`` builds
the BasicBlock (18/34), Bottleneck (50/101) and pre-activation variants; ``StagedResNet`` is the
smaller "ResNet-inspired" net taught in CNN courses, made of the same BasicBlock. ``shortcut=False``
builds the plain twin of any of them (the same layers without the additions and the projections), the
network of the degradation experiment that motivated residual learning (He et al. 2016).
"""

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from cifar_lab.errors import ConfigError
from cifar_lab.models.initialization import kaiming_init_
from cifar_lab.models.registry import register


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def projection(in_planes: int, out_planes: int, stride: int, shortcut: bool = True) -> nn.Module | None:
    """Identity when shapes match, else a 1x1 conv + BN (torchvision's ``downsample``); None for a plain block."""
    if not shortcut:
        return None
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; subclasses change ``residual`` (e.g. to add squeeze-and-excitation)."""

    expansion = 1
    pre_activation = False

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = projection(in_planes, planes * self.expansion, stride, shortcut)

    def residual(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        out = self.residual(x)
        return self.relu(out if self.shortcut is None else out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4
    pre_activation = False

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = projection(in_planes, planes * self.expansion, stride, shortcut)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out if self.shortcut is None else out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU before each conv (He et al. 2016, "Identity Mappings"), so the identity path is clean.

    A projection shortcut is a plain 1x1 conv on the pre-activated input, as in the paper.
    """

    expansion = 1
    pre_activation = True

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.has_shortcut = shortcut
        needs_projection = shortcut and (stride != 1 or in_planes != planes)
        self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) if needs_projection else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut if self.has_shortcut else out


Block = type[BasicBlock] | type[Bottleneck] | type[PreActBlock]


class ResNet(nn.Module):
    """Stem, four stages of 64/128/256/512 planes (strides 1/2/2/2), global average pool, linear.

    Pre-activation blocks get a bare conv stem (the first block normalises it) and a final BN-ReLU.
    ``zero_init_residual`` zeroes the last layer of each residual branch (the last BN; the last conv
    in a pre-activation block), so every block starts as the identity, which helps deep nets early on.
    """

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 10,
                 zero_init_residual: bool = False, shortcut: bool = True) -> None:
        super().__init__()
        if zero_init_residual and not shortcut:
            raise ConfigError("zero_init_residual starts each block as the identity through its shortcut; with "
                              "shortcut: false it would start the network at zero: drop one of the two")
        self.in_planes, self.with_shortcuts = 64, shortcut
        stem_norm = [] if block.pre_activation else [nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(conv3x3(3, 64), *stem_norm)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        out_planes = 512 * block.expansion
        self.final_act = (nn.Sequential(nn.BatchNorm2d(out_planes), nn.ReLU(inplace=True))
                          if block.pre_activation else nn.Identity())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_planes, num_classes)
        kaiming_init_(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
                elif isinstance(m, PreActBlock):
                    nn.init.zeros_(m.conv2.weight)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        strides = [stride] + [1] * (blocks - 1)
        layers = []
        for s in strides:
            layers.append(block(self.in_planes, planes, s, shortcut=self.with_shortcuts))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(self.final_act(x)).flatten(1))


class StagedResNet(nn.Module):
    """The "ResNet-inspired" CNN of deep-learning courses.

    A ConvBlock (conv3x3-BN-ReLU), then per stage: 2x2 max-pool (from the second stage on), a
    ConvBlock to the stage width and ``blocks`` identity-shortcut residual blocks; global average
    pooling, dropout and a linear classifier. ``shortcut=False``: the same blocks without their additions.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128, 256), blocks: int = 1,
                 dropout: float = 0.2, shortcut: bool = True) -> None:
        super().__init__()
        stages: list[nn.Module] = [Conv2dNormActivation(3, widths[0], 3)]
        in_channels = widths[0]
        for index, width in enumerate(widths):
            downsample = [nn.MaxPool2d(2)] if index > 0 else []
            residual = [BasicBlock(width, width, shortcut=shortcut) for _ in range(blocks)]
            stages.append(nn.Sequential(*downsample, Conv2dNormActivation(in_channels, width, 3), *residual))
            in_channels = width
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


@register("resnet18")
def resnet18(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


@register("resnet34")
def resnet34(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


@register("resnet50")
def resnet50(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


@register("resnet101")
def resnet101(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, **kwargs)


@register("preact_resnet18")
def preact_resnet18(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


@register("resnet_stages")
def resnet_stages(num_classes: int = 10, **kwargs) -> StagedResNet:
    return StagedResNet(num_classes=num_classes, **kwargs)
