"""Backbones by name: ``@register("name")`` on a factory, ``create("name", num_classes=10)``.

A name containing ``:`` is a dotted path ``package.module:factory`` to the user's own network,
so new architectures need no change to cifar_lab.
"""

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from cifar_lab.errors import UnknownBackboneError

BackboneFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, BackboneFactory] = {}


def register(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding a factory ``(num_classes, **kwargs) -> nn.Module`` under ``name``."""

    def add(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return add


def available() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def get_factory(name: str) -> BackboneFactory:
    if ":" in name:
        return _import_factory(name)
    if name not in _REGISTRY:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; registered: {', '.join(available())} "
            f"(or give your own as 'package.module:factory')"
        )
    return _REGISTRY[name]


def _import_factory(path: str) -> BackboneFactory:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownBackboneError(f"backbone {path!r}: cannot import module {module_name!r} ({err})") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UnknownBackboneError(f"backbone {path!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def create(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the backbone ``name`` with a ``num_classes``-way output layer."""
    return get_factory(name)(num_classes=num_classes, **kwargs)
