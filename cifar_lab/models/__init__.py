"""Backbone registry; importing this package registers every built-in backbone."""

from cifar_lab.models import (  # noqa: F401  (registers the backbones)
    airbench,
    densenet,
    lenet,
    mlp,
    mobilenet,
    resnet,
    resnet9,
    senet,
    simple,
    torchvision,
    vgg,
)
from cifar_lab.models.registry import (
    available,
    create,
    families,
    register,
    register_family,
)

__all__ = ["available", "create", "families", "register", "register_family"]
