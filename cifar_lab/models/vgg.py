"""VGG with BatchNorm for 32x32 inputs, after torchvision's ``models/vgg.py``.

Five max-pools take 32x32 to 1x1, so the usual CIFAR head is a single Linear(512, classes)
instead of ImageNet's 4096-wide MLP (VGG16: 14,728,266 parameters for 10 classes).
"""

from torch import Tensor, nn

from cifar_lab.models.initialization import kaiming_init_
from cifar_lab.models.registry import register

# Output channels of each 3x3 conv; "M" is a 2x2 max-pool (torchvision's configurations A/B/D/E).
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def make_features(config: list[int | str]) -> nn.Sequential:
    """Conv3x3(+bias)-BN-ReLU for each width, MaxPool2d(2) for each "M" (torchvision's ``make_layers``)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            in_channels = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``dropout`` acts on the 512 features before the classifier (off by default; no parameters either way)."""

    def __init__(self, config: list[int | str], num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = make_features(config)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(512, num_classes)
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(x).flatten(1)))


@register("vgg11")
def vgg11(num_classes: int = 10, **kwargs) -> VGG:
    return VGG(CONFIGS["vgg11"], num_classes=num_classes, **kwargs)


@register("vgg13")
def vgg13(num_classes: int = 10, **kwargs) -> VGG:
    return VGG(CONFIGS["vgg13"], num_classes=num_classes, **kwargs)


@register("vgg16")
def vgg16(num_classes: int = 10, **kwargs) -> VGG:
    return VGG(CONFIGS["vgg16"], num_classes=num_classes, **kwargs)


@register("vgg19")
def vgg19(num_classes: int = 10, **kwargs) -> VGG:
    return VGG(CONFIGS["vgg19"], num_classes=num_classes, **kwargs)
