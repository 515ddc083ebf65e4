"""Lightning callbacks for cifar_lab recipes; add them under ``trainer.callbacks`` in YAML."""

from cifar_lab.callbacks.lookahead import Lookahead
from cifar_lab.callbacks.whitening import PatchWhitening

__all__ = ["Lookahead", "PatchWhitening"]
