"""LeNet-5 (LeCun et al. 1998) for 32x32 colour images: the first CNN most courses show, with ReLU and
max-pooling in place of the original's tanh and trainable subsampling."""

from torch import nn

from cifar_lab.models.registry import register


class LeNet5(nn.Module):
    """Conv5x5(6)-Pool-Conv5x5(16)-Pool (32 -> 28 -> 14 -> 10 -> 5) then FC 120-84-classes; 62,006 parameters
    for 10 classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, kernel_size=5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register("lenet5")
def lenet5(num_classes: int = 10, **kwargs) -> LeNet5:
    return LeNet5(num_classes=num_classes, **kwargs)
