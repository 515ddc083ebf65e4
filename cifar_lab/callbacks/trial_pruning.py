"""Prune a sweep's trial from inside its own ``fit`` process: Optuna's Lightning pruning callback, bound to a
trial of a study in a shared storage (each trial of ``cifar-lab sweep`` is an ordinary ``fit`` in a process of
its own, so the trial object cannot be handed over; it is looked up by study name and trial number)."""

from typing import Literal

import lightning as L
import optuna
from optuna_integration import PyTorchLightningPruningCallback

# Logged to the run's loggers when the pruner stops the trial: the epoch it stopped after. ``cifar-lab sweep``
# reads it back to mark the trial pruned, and ``compare`` shows the run's curves like any other's.
PRUNED_TAG = "trial/pruned_at_epoch"

PrunerName = Literal["median", "hyperband", "none"]


def make_pruner(name: PrunerName, startup_trials: int = 2) -> optuna.pruners.BasePruner:
    """The pruner a sweep and each of its trials use (a pruner is not stored with the study, so both build
    it from the same settings): the median rule after ``startup_trials`` finished trials, Hyperband, or none."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


class TrialPruning(PyTorchLightningPruningCallback):
    """Report ``monitor`` after every validation to trial ``trial_number`` of ``study_name`` and stop the fit
    when the pruner says so, as a normal end of training (last checkpoint saved, exit code 0), with
    ``PRUNED_TAG`` logged so the sweep knows the difference.

    Args:
        storage: the study's Optuna storage URL (``sqlite:///...``, ``postgresql://...``).
        study_name: the study the trial belongs to.
        trial_number: the trial's number in that study.
        monitor: the logged validation metric reported per epoch (the sweep's objective).
        pruner: ``median``, ``hyperband`` or ``none``, as the sweep was started with.
        pruner_startup_trials: finished trials before the median rule prunes anything.
    """

    def __init__(self, storage: str, study_name: str, trial_number: int, monitor: str = "val/acc",
                 pruner: PrunerName = "median", pruner_startup_trials: int = 2) -> None:
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  pruner=make_pruner(pruner, pruner_startup_trials))
        trial_id = next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == trial_number)
        super().__init__(optuna.Trial(study, trial_id), monitor)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            super().on_validation_end(trainer, pl_module)
        except optuna.TrialPruned:
            trainer.should_stop = True
            for logger in trainer.loggers:
                logger.log_metrics({PRUNED_TAG: pl_module.current_epoch}, step=trainer.global_step)
