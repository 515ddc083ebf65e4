"""Calibration of the test predictions: the expected calibration error (``test/ece``) and its bins, one definition
for ``ImageClassifier``, the callbacks that draw the reliability diagram and the tools."""

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.functional.classification.calibration_error import _binning_bucketize
from torchmetrics.utilities import dim_zero_cat

CALIBRATION_BINS = 15  # equal-width confidence bins, the usual choice since Guo et al. (2017)


def calibration_error(num_classes: int) -> MulticlassCalibrationError:
    """The expected calibration error: over the confidence bins, the share-weighted mean of |accuracy - mean
    confidence|.

    Update it with probabilities, not logits: torchmetrics applies a softmax only to inputs outside [0, 1].
    """
    return MulticlassCalibrationError(num_classes, n_bins=CALIBRATION_BINS, norm="l1")


def calibration_bins(metric: MulticlassCalibrationError) -> tuple[Tensor, Tensor, Tensor]:
    """Per confidence bin: the accuracy, the mean confidence and the share of the samples, from the metric's stored
    predictions and torchmetrics' own binning, so that ``sum(|accuracy - confidence| * proportion)`` is its ECE.

    There are ``n_bins + 1`` bins: the equal-width ``[k / n_bins, (k + 1) / n_bins)`` ones, then one of the
    confidences of exactly 1.0, which torchmetrics counts apart (Lightning-AI/torchmetrics#3510). Under DDP the
    states are gathered from every process, so every rank must call this.
    """
    with metric.sync_context(dist_sync_fn=metric.dist_sync_fn):
        confidences, accuracies = dim_zero_cat(metric.confidences), dim_zero_cat(metric.accuracies)
    boundaries = torch.linspace(0, 1, metric.n_bins + 1, dtype=confidences.dtype, device=confidences.device)
    return _binning_bucketize(confidences, accuracies, boundaries)
