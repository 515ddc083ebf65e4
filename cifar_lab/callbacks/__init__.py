"""Lightning callbacks: those the CLI adds to every run (each configurable under its own key) and
recipe callbacks to add under ``trainer.callbacks`` in YAML (Lookahead, PatchWhitening)."""

from cifar_lab.callbacks.figures import FigureLogger
from cifar_lab.callbacks.hparams import HpMetric, SaveConfigAsHparams
from cifar_lab.callbacks.lookahead import Lookahead
from cifar_lab.callbacks.report import RunReport
from cifar_lab.callbacks.speed import EpochSpeed
from cifar_lab.callbacks.whitening import PatchWhitening

__all__ = ["EpochSpeed", "FigureLogger", "HpMetric", "Lookahead", "PatchWhitening", "RunReport", "SaveConfigAsHparams"]
