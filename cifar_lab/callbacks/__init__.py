"""Lightning callbacks the CLI adds to every run (each configurable under its own key or always on)."""

from cifar_lab.callbacks.figures import FigureLogger
from cifar_lab.callbacks.hparams import HpMetric, SaveConfigAsHparams
from cifar_lab.callbacks.non_finite import NonFiniteGuard
from cifar_lab.callbacks.random_state import RandomStateCheckpoint
from cifar_lab.callbacks.report import RunReport
from cifar_lab.callbacks.speed import EpochSpeed

__all__ = ["EpochSpeed", "FigureLogger", "HpMetric", "NonFiniteGuard", "RandomStateCheckpoint", "RunReport",
           "SaveConfigAsHparams"]
