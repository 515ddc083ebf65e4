"""Backbones by name: ``@register("name")`` on a factory, ``create("name", num_classes=10)``.

A name containing ``:`` is either ``family:model`` for a registered family of backbones
(``torchvision:resnet50``, see :func:`register_family`) or a dotted path
``package.module:factory`` to the user's own network, so new architectures need no change to
cifar_lab. Family prefixes take precedence and never contain a dot: ``torchvision:resnet18`` is
the family (CIFAR stem and local weights options), ``torchvision.models:resnet18`` the plain
torchvision function.
"""

import difflib
import importlib
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from cifar_lab.errors import ConfigError, UnknownBackboneError

BackboneFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, BackboneFactory] = {}
_FAMILIES: dict[str, BackboneFactory] = {}


def _adder(table: dict[str, BackboneFactory], key: str, kind: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """A decorator that files a factory under ``key`` in ``table``, once."""

    def add(factory: BackboneFactory) -> BackboneFactory:
        if key in table:
            raise ValueError(f"{kind} {key!r} is already registered")
        table[key] = factory
        return factory

    return add


def register(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding a factory ``(num_classes, **kwargs) -> nn.Module`` under ``name``."""
    return _adder(_REGISTRY, name, "backbone")


def register_family(prefix: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding a factory ``(model_name, num_classes, **kwargs)`` for names ``prefix:model_name``."""
    if "." in prefix or ":" in prefix:
        raise ValueError(f"family prefix {prefix!r} may not contain '.' or ':' (it would shadow dotted paths)")
    return _adder(_FAMILIES, prefix, "backbone family")


def available() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def families() -> list[str]:
    """Registered family prefixes, sorted (``torchvision`` for ``torchvision:<name>``)."""
    return sorted(_FAMILIES)


def closest(name: str, candidates: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the most similar candidate, or nothing when none is close."""
    matches = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def get_factory(name: str) -> BackboneFactory:
    prefix, colon, model_name = name.partition(":")
    if colon and prefix in _FAMILIES:
        return partial(_FAMILIES[prefix], model_name)
    if colon:
        return _import_factory(name)
    if name not in _REGISTRY:
        family_names = ", ".join(f"'{family}:<name>'" for family in families())
        raise UnknownBackboneError(
            f"unknown backbone {name!r}{closest(name, available())}; registered: {', '.join(available())} "
            f"(or {family_names + ', or ' if family_names else ''}your own as 'package.module:factory')"
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
    factory = get_factory(name)
    try:
        return factory(num_classes=num_classes, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ConfigError(f"backbone {name!r} does not take this option ({err}); check model.backbone_kwargs") from err
