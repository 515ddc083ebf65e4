"""At the end of ``test``: training curves and a per-class accuracy table as files in the run folder."""

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from cifar_lab.callbacks.hparams import tensorboard_loggers
from cifar_lab.reporting.plots import groups_figure
from cifar_lab.reporting.runs import RunGroup, load_run
from cifar_lab.reporting.tables import markdown_table

CURVES_FILE = "curves.png"
PER_CLASS_FILE = "per_class_accuracy.md"


class RunReport(Callback):
    """Writes ``curves.png`` (training and validation accuracy and loss, test accuracy) and ``per_class_accuracy.md``
    into the logger's folder, so the result can be read without TensorBoard.

    Args:
        curves: write ``curves.png``.
        per_class_table: write ``per_class_accuracy.md`` from the ``test/acc_<class>`` metrics.
    """

    def __init__(self, curves: bool = True, per_class_table: bool = True) -> None:
        self.curves = curves
        self.per_class_table = per_class_table

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
