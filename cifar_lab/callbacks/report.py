"""At the end of ``test``: training curves, a per-class accuracy table and a reliability diagram as files in the run
folder."""

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from cifar_lab.callbacks.hparams import tensorboard_loggers
from cifar_lab.reporting.calibration import calibration_bins
from cifar_lab.reporting.plots import groups_figure, reliability_diagram_figure
from cifar_lab.reporting.runs import RunGroup, load_run
from cifar_lab.reporting.tables import markdown_table

CURVES_FILE = "curves.png"
PER_CLASS_FILE = "per_class_accuracy.md"
RELIABILITY_FILE = "reliability_diagram.png"


class RunReport(Callback):
    """Writes ``curves.png`` (training and validation accuracy and loss, test accuracy), ``per_class_accuracy.md``
    and ``reliability_diagram.png`` into the logger's folder, so the result can be read without TensorBoard.

    Args:
        curves: write ``curves.png``.
        per_class_table: write ``per_class_accuracy.md`` from the ``test/acc_<class>`` metrics.
        reliability_diagram: write ``reliability_diagram.png``: accuracy against confidence per bin of ``test/ece``
            (the model's ``test_ece`` metric, as ``ImageClassifier`` has it).
    """

    def __init__(self, curves: bool = True, per_class_table: bool = True, reliability_diagram: bool = True) -> None:
        self.curves = curves
        self.per_class_table = per_class_table
        self.reliability_diagram = reliability_diagram
        self.calibration: tuple[Tensor, Tensor, Tensor] | None = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the bins for ``on_test_end``: by then the module has reset its metric."""
        if self.reliability_diagram:
            self.calibration = calibration_bins(pl_module.test_ece)  # on every rank: it syncs

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        folder = Path(log_dir)
        if self.per_class_table:
            metrics = trainer.callback_metrics
            rows = [(name, f"{float(metrics[f'test/acc_{name}']):.4f}") for name in pl_module.class_names
                    if f"test/acc_{name}" in metrics]
            if "test/acc" in metrics:
                rows.append(("**all**", f"{float(metrics['test/acc']):.4f}"))
            (folder / PER_CLASS_FILE).write_text(markdown_table(["class", "test accuracy"], rows))
        if self.curves and tensorboard_loggers(trainer):  # curves come from the TensorBoard event files
            for logger in tensorboard_loggers(trainer):
                logger.experiment.flush()  # this test's scalars, for the test accuracy bar
            run = load_run(folder)
            groups_figure([RunGroup(run.label, [run])]).savefig(folder / CURVES_FILE, dpi=80)
        if self.calibration is not None:
            reliability_diagram_figure(*self.calibration).savefig(folder / RELIABILITY_FILE, dpi=80)
