"""Pieces shared by several backbone families."""

from torch import nn


def kaiming_init_(model: nn.Module) -> None:
    """He-normal convolutions (fan_out, as torchvision's ResNet/VGG/MobileNet), zero conv biases,
    unit-scale zero-shift BatchNorm; linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
