"""SE-ResNet (Hu et al. 2018): ResNet-18 whose blocks rescale their channels by squeeze-and-excitation."""

from torch import Tensor
from torchvision.ops import SqueezeExcitation

from cifar_lab.models.registry import register
from cifar_lab.models.resnet import BasicBlock, ResNet


class SEBasicBlock(BasicBlock):
    """BasicBlock with SE (global pool, FC to planes/reduction, ReLU, FC back, sigmoid) before the addition."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True,
                 reduction: int = 16) -> None:
        super().__init__(in_planes, planes, stride, shortcut)
        self.se = SqueezeExcitation(planes, planes // reduction)

    def residual(self, x: Tensor) -> Tensor:
        return self.se(super().residual(x))


@register("se_resnet18")
def se_resnet18(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(SEBasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)
