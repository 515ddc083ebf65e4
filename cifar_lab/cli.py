"""``cifar-lab``: LightningCLI wiring YAML configs to ImageClassifier, CIFAR10DataModule and Trainer.

Defaults every run gets: best/last checkpoints on ``val/acc``, a learning-rate monitor and a
TensorBoard logger writing ``runs/<backbone>/version_N/`` with the full ``config.yaml`` beside it.
"""

import os
import sys
import warnings

from jsonargparse import ArgumentError
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from cifar_lab.callbacks import NonFiniteGuard, RandomStateCheckpoint
from cifar_lab.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from cifar_lab.data import CIFAR10DataModule
from cifar_lab.errors import CifarLabError
from cifar_lab.module import ImageClassifier
from cifar_lab.resume import expand_resume
from cifar_lab.run_checks import check_fit_config, check_precision

DEBUG_ENV = "CIFAR_LAB_DEBUG"
RUNS_DIR = "runs"
CKPT_ALIASES = {"last", "best", "hpc"}  # ckpt_path values Lightning resolves itself


class CifarLabCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.classes", "model.class_names", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.save_top_k": 1,
            "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(NonFiniteGuard, "non_finite_guard")
        parser.add_lightning_class_args(RandomStateCheckpoint, "random_state")
        parser.set_defaults({
            "trainer.logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": RUNS_DIR, "name": None, "default_hp_metric": False},
            }
        })

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Expand ``--resume RUN_DIR``; refuse a bad ``--ckpt_path`` before Lightning reads its hyperparameters."""
        given = sys.argv[1:] if args is None else args
        expanded = expand_resume(given) if isinstance(given, list) else given
        with warnings.catch_warnings():  # LightningCLI warns when args replace a non-empty sys.argv
            warnings.filterwarnings("ignore", "LightningCLI's args parameter")
            super().parse_arguments(parser, args if expanded == given else expanded)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in CKPT_ALIASES:
            load_checkpoint_file(ckpt_path)

    def before_instantiate_classes(self) -> None:
        """Name the TensorBoard run after the backbone unless the config names it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit":
            check_fit_config(config)
        logger = config.trainer.logger
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "name" in init_args and init_args.name is None:
            init_args.name = config.model.backbone.replace(":", "-").replace("/", "-")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer from the config, saving checkpoints atomically unless a plugin chose its own IO."""
        trainer = super().instantiate_trainer(**kwargs)
        check_precision(trainer, (self.config[self.subcommand] if self.subcommand else self.config).trainer.precision)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def main(args: list[str] | None = None) -> None:
    """Console entry point; input errors end as one line on stderr unless CIFAR_LAB_DEBUG=1."""
    try:
        CifarLabCLI(
            ImageClassifier,
            CIFAR10DataModule,
            seed_everything_default=True,
            auto_configure_optimizers=False,  # optimizer and schedule live in model: (see ImageClassifier)
            save_config_kwargs={"overwrite": True},
            # Parse errors end as one line below (not usage + message); a mistyped option is an error, not a prefix.
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False},
            args=args,
        )
    except (CifarLabError, ArgumentError, MisconfigurationException) as err:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"cifar-lab: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(1)
