"""``torchvision:<name>``: any torchvision classification model, optionally fitted to 32x32 inputs.

``cifar_stem=True`` replaces the first convolution (ImageNet's 7x7 or 3x3 stride-2 stem) with a
3x3 stride-1 conv and drops a max-pool that follows it before the next conv, as the CIFAR
ResNets do; it suits the convolutional families (ResNet/ResNeXt/Wide ResNet, DenseNet, MobileNet,
EfficientNet, RegNet, ShuffleNet, ...). ``weights`` names a local ``state_dict`` file, never a
download: tensors whose shape changed (the new classifier, the new stem) keep their fresh
initialisation and are reported in a warning. That is transfer learning from ImageNet weights:
``weights`` + ``input_size`` (the input upsampled, e.g. to 64, for an ImageNet stem; see
``cifar_lab.callbacks.finetune`` for training the new head first).
"""

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision.models
from torch import nn

from cifar_lab.errors import ConfigError, UnknownBackboneError, WeightsNotFoundError
from cifar_lab.models.registry import closest, register_family


def classification_models() -> list[str]:
    """Names of torchvision's classification models (not detection, segmentation, video, ...)."""
    return torchvision.models.list_models(module=torchvision.models)


def replace_stem(model: nn.Module, name: str) -> None:
    """3x3 stride-1 first conv; identity for a max-pool between it and the second conv."""
    convs = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    path, first = convs[0]
    if first.stride == (1, 1):
        raise ConfigError(f"torchvision:{name} keeps the input resolution in its first conv already; "
                          f"leave out cifar_stem")
    model.set_submodule(path, nn.Conv2d(first.in_channels, first.out_channels, 3, padding=1,
                                        bias=first.bias is not None))
    second_conv = convs[1][0] if len(convs) > 1 else None
    passed_stem = False
    for module_path, module in model.named_modules():
        if module_path == path:
            passed_stem = True
        elif module_path == second_conv:
            return
        elif passed_stem and isinstance(module, nn.MaxPool2d):
            model.set_submodule(module_path, nn.Identity())
            return


def load_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load a local state_dict; tensors whose shapes differ from the model's are skipped with a warning."""
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} for torchvision:{name} does not exist; give the path of a "
                                   f"file saved with torch.save(model.state_dict(), path), e.g. once with internet: "
                                   f"torch.save(torchvision.models.{name}(weights='DEFAULT').state_dict(), "
                                   f"'{path}') (weights are never downloaded at run time)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise ConfigError(f"weights file {path} is not a readable state_dict ({err})") from err
    own = model.state_dict()
    resized = [key for key, value in state.items() if key in own and value.shape != own[key].shape]
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in resized}, strict=False)
    missing = [key for key in missing if key not in resized]
    if missing or unexpected:
        raise ConfigError(f"weights file {path} does not match torchvision:{name}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]} (of {len(missing)} and {len(unexpected)})")
    if resized:
        warnings.warn(f"torchvision:{name}: {path} has other shapes for {', '.join(resized)}; "
                      f"these keep their fresh initialisation", stacklevel=2)


class Upsampled(nn.Module):
    """A network that first resizes its input to ``size x size``: ImageNet stems shrink a 32x32
    image to 1x1 before the last stage."""

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.size = size
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                  align_corners=False))


@register_family("torchvision")
def torchvision_backbone(name: str, num_classes: int = 10, cifar_stem: bool = False, weights: str | None = None,
                         input_size: int | None = None, **kwargs: Any) -> nn.Module:
    """torchvision's ``name`` built with ``num_classes`` and ``kwargs``; see the module docstring."""
    names = classification_models()
    if name not in names:
        raise UnknownBackboneError(f"unknown torchvision model {name!r}{closest(name, names)}; "
                                   f"classification models: {', '.join(names)}")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if cifar_stem:
        replace_stem(model, name)
    if weights is not None:
        load_weights(model, Path(weights).expanduser(), name)
    return Upsampled(model, input_size) if input_size else model
