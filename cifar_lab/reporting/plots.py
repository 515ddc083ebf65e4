"""Figures shared by the TensorBoard callbacks, the test report and the scripts.

Built on ``matplotlib.figure.Figure`` directly: it renders with the Agg canvas and keeps no pyplot
state, so figures work without a display and are freed when dropped.
"""

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor, nn
from torchmetrics.utilities.plot import plot_confusion_matrix
from torchvision.utils import make_grid

from cifar_lab.data.augment import ChannelStats
from cifar_lab.reporting.statistics import spread

if TYPE_CHECKING:
    from cifar_lab.reporting.runs import Run, RunGroup

CORRECT, WRONG = "tab:green", "tab:red"


def denormalize(images: Tensor, stats: ChannelStats) -> Tensor:
    """Undo the normalisation with per-channel (mean, std) ``stats``: float ``[N,3,H,W]`` in [0, 1], ready to show."""
    mean, std = (torch.tensor(values, device=images.device).view(1, 3, 1, 1) for values in stats)
    return (images * std + mean).clamp(0, 1)


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first ``Conv2d`` in module order: the layer that looks at pixels in a CNN."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def filter_grid(conv: nn.Conv2d, zoom: int = 8) -> Tensor:
    """The layer's filters as one ``[3,H,W]`` image, each filter scaled to [0, 1] and enlarged ``zoom`` times.

    RGB filters show in colour; filters of other layers show their first input channel.
    """
    weight = conv.weight.detach().float().cpu()
    weight = weight if weight.shape[1] == 3 else weight[:, :1]
    weight = F.interpolate(weight, scale_factor=zoom, mode="nearest")
    return make_grid(weight, nrow=8, normalize=True, scale_each=True, padding=2, pad_value=1.0)


TEXT_CELLS_UP_TO = 20  # classes whose confusion matrix shows each cell's value: CIFAR-100's 10,000 would take ~25 s


def confusion_matrix_figure(confmat: Tensor, class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (true class per row) drawn by torchmetrics; each cell's value written in it
    for up to ``TEXT_CELLS_UP_TO`` classes, colour alone beyond."""
    many = len(class_names) > TEXT_CELLS_UP_TO
    fig = Figure(figsize=(16, 15) if many else (8, 7), layout="constrained")
    ax = fig.add_subplot()
    plot_confusion_matrix(confmat.detach().cpu(), ax=ax, labels=list(class_names), add_text=not many)
    if many:
        ax.tick_params(labelsize=5)
    ax.set_title("confusion matrix (rows: true class, normalised)")
    return fig


def per_class_accuracy_figure(accuracy: Tensor, class_names: Sequence[str]) -> Figure:
    """Horizontal bars, one per class, with the accuracy written beside each."""
    values = accuracy.detach().cpu().tolist()
    fig = Figure(figsize=(6, 0.35 * len(values) + 1), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(list(class_names), values, color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=2)
    ax.set_xlim(0, 1.1)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy")
    return fig


def reliability_diagram_figure(accuracy: Tensor, confidence: Tensor, proportion: Tensor) -> Figure:
    """Accuracy (bars) against mean confidence (dots) per confidence bin, the diagonal of perfect calibration and
    the ECE in the title; below, each bin's share of the samples, which says how much a bar's gap counts.

    Takes the bins of ``calibration_bins``: ``n`` equal-width ones over [0, 1], then torchmetrics' bin of the
    confidences of exactly 1.0, drawn as a narrow hatched bar at 1.
    """
    ece = float(torch.sum(torch.abs(accuracy - confidence) * proportion))  # as torchmetrics sums it: the same value
    accuracy, confidence, proportion = (values.detach().cpu().numpy() for values in (accuracy, confidence, proportion))
    n_bins = len(accuracy) - 1
    centers = np.append((np.arange(n_bins) + 0.5) / n_bins, 1.0)
    widths = [1 / n_bins] * n_bins + [0.25 / n_bins]
    filled = proportion > 0
    fig = Figure(figsize=(6, 6.5), layout="constrained")
    ax_acc, ax_share = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax_acc.plot([0, 1], [0, 1], "--", color="tab:gray", label="perfect calibration")
    ax_acc.bar(centers, accuracy, width=widths, color="tab:blue", edgecolor="white", label="accuracy")
    ax_acc.plot(centers[filled], confidence[filled], "o", color=WRONG, label="mean confidence")
    ax_acc.set(title=f"reliability diagram: ECE {ece:.4f} ({n_bins} bins)", ylabel="accuracy", xlim=(0, 1.02),
               ylim=(0, 1.02))
    ax_acc.legend(loc="upper left", fontsize=8)
    ax_share.bar(centers, proportion, width=widths, color="tab:gray", edgecolor="white")
    ax_share.set(xlabel="confidence (top-1 probability)", ylabel="share of samples", ylim=(0, 1))
    for ax in (ax_acc, ax_share):
        ax.patches[-1].set_hatch("//")  # the confidences of exactly 1.0
    return fig


def prediction_grid_figure(images: Tensor, targets: Tensor, preds: Tensor | None, class_names: Sequence[str],
                           columns: int = 8) -> Figure:
    """Images (in [0, 1]) titled ``predicted / true`` in green when right and red when wrong; with no
    ``preds``, titled by their class (a look at the training images)."""
    rows = -(-len(images) // columns)
    fig = Figure(figsize=(1.6 * columns, 1.9 * rows), layout="constrained")
    for i, (image, target) in enumerate(zip(images.float().cpu(), targets.tolist())):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image.permute(1, 2, 0).numpy())
        if preds is None:
            ax.set_title(class_names[target], fontsize=8)
        else:
            pred = int(preds[i])
            ax.set_title(f"{class_names[pred]}\n({class_names[target]})", fontsize=8,
                         color=CORRECT if pred == target else WRONG)
        ax.axis("off")
    return fig


def top_predictions_figure(images: Tensor, probs: Tensor, targets: Tensor, class_names: Sequence[str],
                           k: int = 3) -> Figure:
    """One row per image: the image and a bar chart of its ``k`` most probable classes."""
    top = probs.topk(k, dim=1)
    fig = Figure(figsize=(6, 1.5 * len(images)), layout="constrained")
    axes = fig.subplots(len(images), 2, squeeze=False, width_ratios=(1, 2.5))
    for (ax_image, ax_bars), image, values, indices, target in zip(axes, images.cpu(), top.values.tolist(),
                                                                   top.indices.tolist(), targets.tolist()):
        ax_image.imshow(image.permute(1, 2, 0).numpy())
        ax_image.set_title(f"true: {class_names[target]}", fontsize=9)
        ax_image.axis("off")
        colors = [CORRECT if index == target else WRONG for index in indices]
        bars = ax_bars.barh([class_names[i] for i in indices], values, color=colors)
        ax_bars.bar_label(bars, fmt="%.2f", padding=2)
        ax_bars.set_xlim(0, 1.15)
        ax_bars.invert_yaxis()
    return fig


def grad_cam_figure(images: Tensor, heatmaps: Tensor, preds: Tensor, class_names: Sequence[str]) -> Figure:
    """Each image above its Grad-CAM heat map (for the predicted class) laid over it."""
    fig = Figure(figsize=(1.6 * len(images), 3.4), layout="constrained")
    axes = fig.subplots(2, len(images), squeeze=False)
    for column, (image, heatmap, pred) in enumerate(zip(images.cpu(), heatmaps.cpu(), preds.tolist())):
        picture = image.permute(1, 2, 0).numpy()
        axes[0, column].imshow(picture)
        axes[0, column].set_title(class_names[pred], fontsize=8)
        axes[1, column].imshow(picture)
        axes[1, column].imshow(heatmap.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for ax in axes[:, column]:
            ax.axis("off")
    return fig


def epoch_mean_std(runs: Sequence["Run"], tag: str) -> tuple[list[int], list[float], list[float]]:
    """Per epoch: the mean of ``tag`` over the runs that logged a finite value (a diverged run's NaN/inf loss
    ends its curve), and its sample std (0 for one run)."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for epoch, value in zip(*run.per_epoch(tag)):
            if math.isfinite(value):
                by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


# Per panel: the validation tag (solid, labelled by group) and the training tag (dashed, same colour), so a
# gap that opens between them (overfitting) shows.
CURVE_PANELS = (("accuracy", "val/acc", "train/acc"), ("loss", "val/loss", "train/loss_epoch"))


def groups_figure(groups: Sequence["RunGroup"]) -> Figure:
    """Validation (solid) and training (dashed) accuracy and loss per epoch of every group (mean, with a ±1 std
    band over its runs), and each group's mean test accuracy with its 95% interval as an error bar."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_acc, ax_loss, ax_test = fig.subplots(1, 3)
    for index, group in enumerate(groups):
        color = f"C{index % 10}"
        for ax, (_, val_tag, train_tag) in zip((ax_acc, ax_loss), CURVE_PANELS):
            for tag, style, label in ((val_tag, "-", group.label), (train_tag, "--", None)):
                epochs, means, stds = epoch_mean_std(group.runs, tag)
                ax.plot(epochs, means, style, marker="o", markersize=3, color=color, label=label)
                if any(stds):
                    low, high = [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)]
                    ax.fill_between(epochs, low, high, color=color, alpha=0.15)
    for ax, (name, _, _) in zip((ax_acc, ax_loss), CURVE_PANELS):
        ax.set(title=f"{name}: validation (solid), training (dashed)", xlabel="epoch", ylabel=name)
    tested = [(group.label, spread(values)) for group in groups
              if (values := [v for run in group.runs if (v := run.last("test/acc")) is not None])]
    if tested:
        means = [s.mean for _, s in tested]
        errors = [[s.mean - s.low if s.std else 0 for _, s in tested],
                  [s.high - s.mean if s.std else 0 for _, s in tested]]
        bars = ax_test.bar(range(len(tested)), means, yerr=errors, capsize=4, color="tab:blue")
        ax_test.set_xticks(range(len(tested)), [label for label, _ in tested], rotation=20, ha="right")
        ax_test.bar_label(bars, fmt="%.3f", label_type="center", color="white")
        ax_test.set_ylim(0, 1.05)
    else:
        ax_test.text(0.5, 0.5, "no run was tested", ha="center", va="center", transform=ax_test.transAxes)
    ax_test.set(title="test accuracy (95% interval over seeds)", ylabel="test/acc")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.has_data():
            ax.legend(fontsize=8)
    return fig
