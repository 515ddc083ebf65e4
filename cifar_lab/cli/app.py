"""``cifar-lab``: LightningCLI wiring YAML configs to ImageClassifier, ImageDataModule and Trainer.

``cifar-lab models|compare|visualize|export|experiment`` are handled before LightningCLI sees the arguments
(they need no Trainer), so the subcommands ``fit|validate|test|predict`` stay exactly LightningCLI's.

Defaults every run gets: best/last checkpoints on ``val/acc``, a learning-rate monitor and a
TensorBoard logger writing ``runs/<backbone>/version_N/`` with the full ``config.yaml`` beside it.
"""

import ctypes
import inspect
import logging
import os
import signal
import sys
import warnings

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
)
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_info

from cifar_lab.callbacks import (
    CSVPredictionWriter,
    EpochSpeed,
    FigureLogger,
    HpMetric,
    MidEpochCheckpoint,
    NonFiniteGuard,
    RandomStateCheckpoint,
    RunReport,
    SaveConfigAsHparams,
    ThrottledProgressBar,
    progress_bar_before_checkpoints,
    skip_idle_batch_hooks,
)
from cifar_lab.checkpoint_io import AtomicCheckpointIO, is_local, load_checkpoint_file
from cifar_lab.cli.checks import check_fit_config, check_precision
from cifar_lab.cli.resume import ResumeRun
from cifar_lab.data import ImageDataModule
from cifar_lab.data.image_files import CIFAR_SIZE
from cifar_lab.errors import CifarLabError, ConfigError
from cifar_lab.module import ImageClassifier
from cifar_lab.precision import automatic_precision
from cifar_lab.profiler import NullProfiler
from cifar_lab.reporting.runs import RUNS_DIR, RunFolder
from cifar_lab.tools import PARENT_PID_ENV, TOOLS, tool_main

DEBUG_ENV = "CIFAR_LAB_DEBUG"
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
CKPT_ALIASES = {"last", "best", "hpc"}  # ckpt_path values Lightning resolves itself
# DataModule options that say which images a model was trained on, and how they were split and scaled.
DATASET_OPTIONS = ("dataset", "labels", "data_dir", "normalize", "val_size", "test_size", "split_seed")
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
CHATTER = ("💡 Tip:", "TPU available:", "HPU available:")


class CifarLabCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--resume", action=ResumeRun)
        parser.add_argument("--threads", type=int | None, default=None,
                            help="CPU threads for torch's intra-op parallelism (null: torch's default, one per core)")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.classes", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.input_stats", "model.input_stats", apply_on="instantiate")
        parser.link_arguments("model.backbone_kwargs", "data.image_size", compute_fn=input_size)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.save_top_k": 1,
            "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.enable_version_counter": False,  # last.ckpt is shared with mid_epoch_checkpoint
        })
        parser.add_lightning_class_args(MidEpochCheckpoint, "mid_epoch_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "mid_epoch_checkpoint.dirpath")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(CSVPredictionWriter, "predictions")
        parser.add_lightning_class_args(NonFiniteGuard, "non_finite_guard")
        parser.add_lightning_class_args(RandomStateCheckpoint, "random_state")
        parser.set_defaults({
            "trainer.logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": RUNS_DIR, "name": None, "default_hp_metric": False, "log_graph": True},
            }
        })
        parser.add_lightning_class_args(HpMetric, "hp_metric")
        parser.add_lightning_class_args(EpochSpeed, "speed")
        parser.add_lightning_class_args(FigureLogger, "figures")
        parser.add_lightning_class_args(RunReport, "report")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Refuse a bad local ``--ckpt_path`` in one line before LightningCLI reads its hyperparameters from it.

        Aliases, fsspec URLs (``s3://...``) and ``registry:`` names are left to Lightning, which resolves them.
        """
        with warnings.catch_warnings():  # LightningCLI warns when args replace a non-empty sys.argv
            warnings.filterwarnings("ignore", "LightningCLI's args parameter")
            super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in CKPT_ALIASES and is_local(ckpt_path):
            load_checkpoint_file(ckpt_path)

    def before_instantiate_classes(self) -> None:
        """Apply ``threads``; name the TensorBoard run after the backbone unless the config names it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.threads is not None:
            set_threads(config.threads)
        if config.trainer.precision is None:  # chosen here, so the saved config.yaml says what ran
            config.trainer.precision, reason = automatic_precision(config.trainer.accelerator)
            rank_zero_info(f"trainer.precision is null: running in {config.trainer.precision} ({reason})")
        if self.subcommand == "fit":
            check_fit_config(config)
            checkpoint_after_validation(config)
        elif config.get("ckpt_path") and config.ckpt_path not in CKPT_ALIASES and is_local(config.ckpt_path):
            data_from_checkpoint(config.data, load_checkpoint_file(config.ckpt_path))
        logger = config.trainer.logger
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "name" in init_args and init_args.name is None:
            init_args.name = config.model.backbone.replace(":", "-").replace("/", "-")
        if self.subcommand == "test":
            self._test_into_run_folder(config)

    def _test_into_run_folder(self, config: Namespace) -> None:
        """``test`` of a checkpoint from ``<run>/checkpoints/`` logs into ``<run>`` (not a new version), beside
        the training curves it belongs to, and leaves that run's ``config.yaml`` as fit wrote it. Only
        ``last.ckpt``'s test logs into the run itself, so the run's ``test/acc`` never comes from a checkpoint
        picked by its score; the others log into a sub-folder (``RunFolder.test_folder``)."""
        run = RunFolder.of_checkpoint(config.ckpt_path)
        logger = config.trainer.logger
        init_args = getattr(logger, "init_args", None)
        if run is None or init_args is None or not logger.class_path.endswith(".TensorBoardLogger"):
            return
        if init_args.get("version") is None:
            for key, value in run.logger_location().items():
                init_args[key] = value
        if init_args.get("sub_dir") is None:
            init_args.sub_dir = run.test_folder(config.ckpt_path)
        init_args.log_graph = False  # fit logged it there already
        self.save_config_callback = None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer from the config, saving checkpoints atomically unless a plugin chose its own IO, with a
        progress bar redrawn on a clock where the config lists none (Lightning's own redraws every step), a
        profiler that costs nothing where it names none, and no per-batch calls of hooks a callback leaves empty."""
        trainer_init = (self.config_init[self.subcommand] if self.subcommand else self.config_init).trainer
        callbacks = trainer_init.callbacks or []
        configured = list(callbacks) if isinstance(callbacks, list) else [callbacks]  # Trainer takes one or a list
        if trainer_init.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in configured):
            kwargs["callbacks"] = [*configured, ThrottledProgressBar()]
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = progress_bar_before_checkpoints(trainer.callbacks)
        if type(trainer.profiler) is PassThroughProfiler:  # the config names no profiler
            trainer.profiler = NullProfiler()
        check_precision(trainer, (self.config[self.subcommand] if self.subcommand else self.config).trainer.precision)
        if trainer.logger is None:  # `trainer.logger: false`: nothing to monitor the learning rate into
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        skip_idle_batch_hooks(trainer.callbacks)
        return trainer


def data_from_checkpoint(data: Namespace, checkpoint: dict) -> None:
    """The dataset a checkpoint was trained on, for ``test``/``validate``/``predict`` of it: each of
    ``DATASET_OPTIONS`` the config leaves at its default is taken from the checkpoint. LightningCLI restores only
    the model's arguments, and the DataModule's classes and statistics would otherwise replace the checkpoint's
    (``predict --ckpt_path`` of a CIFAR-100 model would name CIFAR-10's classes)."""
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    defaults = inspect.signature(ImageDataModule.__init__).parameters
    for name in DATASET_OPTIONS:
        if name in saved and data.get(name) == defaults[name].default:
            data[name] = saved[name]


def input_size(backbone_kwargs: dict | None) -> int:
    """The side of the images a backbone takes: its ``input_size`` (a fine-tuned ImageNet net's), else CIFAR's."""
    return (backbone_kwargs or {}).get("input_size") or CIFAR_SIZE


def checkpoint_after_validation(config: Namespace) -> None:
    """Save the epoch's checkpoints after its validation, unless the config chose otherwise.

    Lightning's default for a run validating every epoch is to save in ``on_train_epoch_end``, before it logs
    the epoch's training metrics: a run resumed from there would never log them. Saved after validation,
    the resumed run finishes the epoch's end itself, with the running metrics the checkpoint kept.
    """
    validates = config.data.val_size != 0 and config.trainer.limit_val_batches != 0
    if validates and config.checkpoint.save_on_train_epoch_end is None:
        config.checkpoint.save_on_train_epoch_end = False


def set_threads(threads: int) -> None:
    """The thread count before any model is built: on a small CPU, more threads than cores only contend."""
    if threads < 1:
        raise ConfigError(f"threads must be >= 1 (or null for torch's default), got {threads}")
    torch.set_num_threads(threads)


class StartupChatterFilter(logging.Filter):
    """Drops Lightning's start-up lines that ask nothing of a user: advertisements and absent accelerator kinds."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CHATTER)


def end_with_parent() -> None:
    """Die with the process named by ``$CIFAR_LAB_PARENT_PID`` (Linux): a suite driver killed with SIGKILL
    leaves no fit of its own writing on into a run that the next driver restarts."""
    parent = os.environ.pop(PARENT_PID_ENV, None)  # popped: DDP's own worker processes must not inherit it
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent died before the line above
        os._exit(1)


def silence_startup_chatter() -> None:
    """Keep what a user can act on (warnings, the device in use, the model summary); drop the rest."""
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, StartupChatterFilter) for f in logger.filters):
            logger.addFilter(StartupChatterFilter())
    # TensorBoard's model graph is drawn with torch.jit.trace, which torch now warns about on every run.
    warnings.filterwarnings("ignore", r"`torch\.jit\.trace", FutureWarning)
    # Lightning's own use of a torch API that torch deprecated; nothing in a config can change it.
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def build_cli(args: list[str] | None = None, run: bool = True) -> CifarLabCLI:
    """The LightningCLI of ``cifar-lab``, after running the subcommand in ``args`` (default: sys.argv);
    ``run=False`` parses and instantiates only (``args`` then has no subcommand)."""
    return CifarLabCLI(
        ImageClassifier,
        ImageDataModule,
        seed_everything_default=True,
        auto_configure_optimizers=False,  # optimizer and schedule live in model: (see ImageClassifier)
        save_config_callback=SaveConfigAsHparams,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            # Parse errors end as one line in main() (not usage + message); a mistyped option is an error,
            # not a prefix of a real one.
            "exit_on_error": False,
            "allow_abbrev": False,
            "epilog": "also: 'cifar-lab models' lists the backbones with their parameter counts and MFLOPs; "
                      "'cifar-lab compare' and 'cifar-lab visualize' look at runs; 'cifar-lab robustness' "
                      "evaluates a checkpoint on CIFAR-10.1 and CIFAR-10-C; 'cifar-lab export' exports; "
                      "'cifar-lab experiment' runs a comparison suite of configs/experiments/",
        },
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point; input errors end as one line on stderr unless CIFAR_LAB_DEBUG=1."""
    argv = sys.argv[1:] if args is None else args
    end_with_parent()
    silence_startup_chatter()
    try:
        if argv and argv[0] in TOOLS:
            tool_main(argv[0])(argv[1:])
        else:
            build_cli(args)
    except (CifarLabError, ArgumentError, MisconfigurationException) as err:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"cifar-lab: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(1)
    except ValueError as err:  # jsonargparse's, around a class under trainer.callbacks that refused its arguments
        refused = our_cause(err)
        if refused is None or os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"cifar-lab: error: {' '.join(str(refused).split())}", file=sys.stderr)
        sys.exit(1)


def our_cause(err: BaseException) -> CifarLabError | None:
    """The ``CifarLabError`` an exception was raised from, if any: jsonargparse re-raises a listed callback's
    ``ConfigError`` as a ``ValueError`` whose text is every type it tried, and the first line is what to fix."""
    seen = err
    while seen is not None and not isinstance(seen, CifarLabError):
        seen = seen.__cause__ or seen.__context__
    return seen
