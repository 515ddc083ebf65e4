"""torchvision ImageNet classifiers fine-tuned on CIFAR-10 from a local weights file.

``pretrained`` builds ``torchvision.models.<arch>`` with its ImageNet head, loads the weights file
(no network needed at run time), then replaces the last linear layer with a ``num_classes`` one.
ImageNet stems shrink a 32x32 image to 1x1 before the last stage, so ``input_size`` upsamples the
input first (64 is a good trade-off, 224 the size the weights were trained at).
"""

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models

from cifar_lab.errors import ConfigError, ModelFileError
from cifar_lab.models.registry import register


class Upsampled(nn.Module):
    """A network that first resizes its input to ``size x size`` (bilinear)."""

    def __init__(self, net: nn.Module, size: int | None) -> None:
        super().__init__()
        self.size = size
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        if self.size is not None:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The qualified name and module of the classification head: the last ``nn.Linear``."""
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear head to replace")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last linear layer for a freshly initialised ``num_classes``-way one."""
    name, head = last_linear(model)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, nn.Linear(head.in_features, num_classes))


def load_weights(model: nn.Module, weights_path: str) -> None:
    """Load a state dict file into ``model`` (tensors only, never arbitrary pickled objects)."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise ModelFileError(
            f"pretrained weights file {str(path)!r} not found; save the ImageNet weights there once, e.g. "
            f"torch.save(torchvision.models.resnet18(weights='IMAGENET1K_V1').state_dict(), '{path}')"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ModelFileError(f"{path} is not a state dict of {type(model).__name__}: {err}") from err


@register("pretrained")
def pretrained(num_classes: int = 10, arch: str = "resnet18", weights_path: str | None = None,
               input_size: int | None = 64) -> nn.Module:
    """torchvision ``arch`` with ImageNet weights from ``weights_path`` and a new ``num_classes`` head.

    ``weights_path: null`` starts from random weights (training from scratch at ImageNet scale).
    """
    try:
        net = models.get_model(arch, weights=None)
    except ValueError as err:
        raise ConfigError(
            f"unknown torchvision model {arch!r}; choose one of torchvision.models.list_models()"
        ) from err
    if weights_path is not None:
        load_weights(net, weights_path)
    replace_head(net, num_classes)
    return Upsampled(net, input_size)
