"""Errors a user can fix: the CLI prints their message on one line instead of a traceback."""


class CifarLabError(Exception):
    """Base class for problems caused by input (config, files, names) rather than by a bug."""


class DataNotFoundError(CifarLabError, FileNotFoundError):
    """The dataset is not on disk and may not be downloaded."""


class ChecksumError(CifarLabError):
    """A file's MD5 differs from the published one, so it must not be unpickled."""


class DataFormatError(CifarLabError, ValueError):
    """An array file has the wrong keys, shapes, dtypes or label range."""


class UnknownBackboneError(CifarLabError, ValueError):
    """A backbone name is neither registered nor an importable ``module:factory`` path."""


class ConfigError(CifarLabError, ValueError):
    """A config value is out of range or names an unknown option."""


class WeightsNotFoundError(CifarLabError, FileNotFoundError):
    """A local weights file named in a config is not there (weights are never downloaded)."""


class DownloadError(CifarLabError, OSError):
    """CIFAR-10 could not be downloaded: the data folder is not writable or the network failed."""


class CheckpointError(CifarLabError, ValueError):
    """A checkpoint file is missing, unreadable, refused by safe loading, or holds another network."""


class TrainingDivergedError(CifarLabError, ArithmeticError):
    """The loss or the weights became NaN or infinite; training on would only spread them."""


class RunNotFoundError(CifarLabError, FileNotFoundError):
    """A path given as a run folder does not exist or holds no TensorBoard event files."""


class ExperimentFailedError(CifarLabError):
    """A fit or test command of a suite ended with an error; the suite stops there."""


class ExportMismatchError(CifarLabError):
    """The exported model's outputs differ from the PyTorch model's."""
