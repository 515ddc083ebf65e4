"""Every Lightning callback: those the CLI adds to every run (each configurable under its own key or always
on) and recipe callbacks to add under ``trainer.callbacks`` in YAML (Lookahead, PatchWhitening,
HeadFirstFinetuning, GradientNorms)."""

from cifar_lab.callbacks.figures import FigureLogger
from cifar_lab.callbacks.finetune import HeadFirstFinetuning
from cifar_lab.callbacks.gradient_norms import GradientNorms
from cifar_lab.callbacks.hparams import HpMetric, SaveConfigAsHparams
from cifar_lab.callbacks.idle_hooks import skip_idle_batch_hooks
from cifar_lab.callbacks.lookahead import Lookahead
from cifar_lab.callbacks.mid_epoch_checkpoint import MidEpochCheckpoint
from cifar_lab.callbacks.non_finite import NonFiniteGuard
from cifar_lab.callbacks.prediction_writer import CSVPredictionWriter
from cifar_lab.callbacks.progress import ThrottledProgressBar, progress_bar_before_checkpoints
from cifar_lab.callbacks.random_state import RandomStateCheckpoint
from cifar_lab.callbacks.report import RunReport
from cifar_lab.callbacks.speed import EpochSpeed
from cifar_lab.callbacks.whitening import PatchWhitening

__all__ = ["CSVPredictionWriter", "EpochSpeed", "FigureLogger", "GradientNorms", "HeadFirstFinetuning", "HpMetric",
           "Lookahead", "MidEpochCheckpoint", "NonFiniteGuard",
           "PatchWhitening", "RandomStateCheckpoint", "RunReport", "SaveConfigAsHparams", "ThrottledProgressBar",
           "progress_bar_before_checkpoints", "skip_idle_batch_hooks"]
