"""Checkpoints written atomically and read safely.

Writing: a run killed while saving never leaves a truncated file, and remote paths are Lightning's.
Reading: ``torch.load`` with ``weights_only=True`` (tensors and plain containers only, so a crafted file
cannot run code), and every way a file can be unusable (missing, truncated, foreign, another network) is a one-line
``CheckpointError`` instead of a traceback from deep inside torch.
"""

import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import torch
from fsspec.utils import get_protocol
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from cifar_lab.errors import CheckpointError

LOCAL_PROTOCOLS = {"file", "local"}  # fsspec's names for the local file system


def load_checkpoint_file(path: str | Path, weights_only: bool = True, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load`` a Lightning checkpoint, turning any failure into a ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects that safe loading (weights_only=True) refuses to unpickle; "
            f"it is not a checkpoint written by cifar-lab"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ... depending on the damage
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt or not a PyTorch file: "
            f"{type(err).__name__}); use another checkpoint of the run, e.g. its last.ckpt"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (it has no 'state_dict')")
    return checkpoint


def check_state_dict_fits(model: nn.Module, state_dict: dict[str, torch.Tensor], expected: str, found: str) -> None:
    """Refuse weights of another network, naming both (``expected``/``found`` describe them)."""
    mine = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    theirs = {name: tuple(t.shape) for name, t in state_dict.items()}
    if mine == theirs:
        return
    missing, unexpected = mine.keys() - theirs.keys(), theirs.keys() - mine.keys()
    resized = sorted(name for name in mine.keys() & theirs.keys() if mine[name] != theirs[name])
    detail = f"{len(missing)} missing and {len(unexpected)} unexpected tensors"
    if resized:
        detail += f", {resized[0]} is {list(theirs[resized[0]])} there but {list(mine[resized[0]])} here"
    raise CheckpointError(
        f"the checkpoint holds {found} but this run builds {expected} ({detail}); use the config the checkpoint "
        f"was trained with (--config <run>/config.yaml)"
    )


def is_local(path: Any) -> bool:
    """Whether ``path`` is on this machine's file system (not an fsspec URL such as ``s3://...``)."""
    return get_protocol(str(path)) in LOCAL_PROTOCOLS


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written once, to a hidden file beside the target renamed over it; remote ones by Lightning.

    ``os.replace`` is atomic on one file system: ``last.ckpt`` is always either the previous complete
    checkpoint or the new complete one, so a run killed at any moment can resume from it. A failed write
    (disk full, permission lost) leaves the previous one in place and ends the run with a one-line
    ``CheckpointError``. Paths with an fsspec protocol go through Lightning's own IO, which writes them
    with the file system's transaction.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if not is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as file:
                self.write(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # on disk before the rename makes it the checkpoint
            os.replace(tmp, target)
        except OSError as err:
            raise CheckpointError(
                f"could not write checkpoint {target.name} into {target.parent} ({err.strerror or err}); the "
                f"checkpoints already there are intact: free space or fix the folder, then resume the run"
            ) from err
        finally:
            tmp.unlink(missing_ok=True)

    def write(self, checkpoint: dict[str, Any], file: BinaryIO) -> None:
        """Serialise ``checkpoint`` into the open temporary file."""
        torch.save(checkpoint, file)

    def load_checkpoint(self, path: Any, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        """``weights_only=True`` unless the caller explicitly trusts the file with ``weights_only=False``."""
        if not is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only is not False)
        return load_checkpoint_file(path, weights_only=weights_only is not False, map_location=map_location)
