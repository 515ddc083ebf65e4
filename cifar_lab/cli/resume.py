"""``fit --resume RUN_DIR``: continue an interrupted run in its own folder from its ``last.ckpt``."""

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, Namespace

from cifar_lab.errors import ConfigError
from cifar_lab.reporting.runs import RunFolder

RESUME_HELP = ("continue the run in RUN_DIR (e.g. runs/simple_cnn/version_0) from its last.ckpt, in its own folder, "
               "with its saved config; options after it override that config")


class ResumeRun(argparse.Action):
    """Loads the run's ``config.yaml`` where ``--resume`` stands, then points ``ckpt_path`` and the logger at the run.

    It stores nothing under its own name (``default=SUPPRESS``), so a run's saved ``config.yaml`` never
    holds ``resume`` and repeating a run from it starts afresh.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"default": argparse.SUPPRESS, "metavar": "RUN_DIR", "help": RESUME_HELP, **kwargs})

    def __call__(self, parser: argparse.ArgumentParser, namespace: Namespace, values: str | Sequence[Any] | None,
                 option_string: str | None = None) -> None:
        if not parser.prog.endswith(" fit"):
            raise ConfigError(f"--resume continues training: use it with 'cifar-lab fit', not '{parser.prog}'")
        run = RunFolder(Path(str(values)))
        if not run.config_file.is_file():
            raise ConfigError(f"--resume {run.path}: {run.config_file} not found; give a run folder such as "
                              f"runs/simple_cnn/version_0")
        ActionConfigFile.apply_config(parser, namespace, "config", str(run.config_file))
        namespace["ckpt_path"] = str(run.last_checkpoint)
        for key, value in run.logger_location().items():
            namespace[f"trainer.logger.init_args.{key}"] = value
        if run.logger_location()["save_dir"] != run.saved_logger_dir:
            # Resumed from elsewhere: ModelCheckpoint sees a new folder and would start a last-v1.ckpt.
            namespace["checkpoint.enable_version_counter"] = False
