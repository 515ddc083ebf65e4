"""The classic small CNN from CNN courses: three Conv3x3-ReLU-MaxPool blocks and an MLP head."""

from torch import nn

from cifar_lab.models.registry import register


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """32x32 -> 4x4 after three poolings; 620,362 parameters for 10 classes with the defaults."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128), hidden: int = 256,
                 dropout: float = 0.5) -> None:
        super().__init__()
        channels = (3, *widths)
        self.features = nn.Sequential(*(conv_block(i, o) for i, o in zip(channels, channels[1:])))
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
