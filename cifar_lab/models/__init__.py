"""Backbone registry; importing this package registers every built-in backbone."""

from cifar_lab.models import pretrained, resnet, simple  # noqa: F401  (registers the backbones)
from cifar_lab.models.registry import available, create, register

__all__ = ["available", "create", "register"]
