"""A fully connected network on the flattened image: the baseline a CNN course compares its first CNN with,
to show what sharing weights across positions (convolution) buys."""

from collections.abc import Sequence

from torch import nn

from cifar_lab.errors import ConfigError
from cifar_lab.models.registry import register

IMAGE_VALUES = 3 * 32 * 32  # one input per pixel and colour channel


class MLP(nn.Module):
    """Flatten -> (Linear-ReLU-Dropout) per hidden width -> Linear to the classes; 1,707,274 parameters for
    10 classes with the default widths (512, 256)."""

    def __init__(self, num_classes: int = 10, hidden: Sequence[int] = (512, 256), dropout: float = 0.2) -> None:
        super().__init__()
        if any(width < 1 for width in hidden):
            raise ConfigError(f"mlp hidden widths must be >= 1, got {list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"mlp dropout must be in [0, 1), got {dropout}")
        sizes = (IMAGE_VALUES, *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for inputs, outputs in zip(sizes, sizes[1:]):
            layers += [nn.Linear(inputs, outputs), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        self.layers = nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))

    def forward(self, x):
        return self.layers(x)


@register("mlp")
def mlp(num_classes: int = 10, **kwargs) -> MLP:
    return MLP(num_classes=num_classes, **kwargs)
