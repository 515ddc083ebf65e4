"""Callbacks every ``cifar-lab`` run gets (see ``cifar_lab.cli``)."""

from cifar_lab.callbacks.non_finite import NonFiniteGuard
from cifar_lab.callbacks.random_state import RandomStateCheckpoint

__all__ = ["NonFiniteGuard", "RandomStateCheckpoint"]
