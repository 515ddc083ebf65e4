"""Checkpoint IOs that stop or fail a run at a chosen save, for tests that kill a run there (no timing involved).

Given as ``--trainer.plugins`` to a ``fit`` subprocess: at the ``last.ckpt`` of ``global_step == step`` it
touches ``marker`` and sleeps, either after the save is complete or half-way through writing it; the
test waits for the marker and sends SIGKILL.
"""

import errno
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import torch

from cifar_lab.checkpoint_io import AtomicCheckpointIO


class PausingCheckpointIO(AtomicCheckpointIO):
    def __init__(self, step: int, marker: str, during_write: bool = False) -> None:
        super().__init__()
        self.step, self.marker, self.during_write = step, Path(marker), during_write
        self.pausing = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.pausing = checkpoint["global_step"] == self.step and Path(path).name == "last.ckpt"
        super().save_checkpoint(checkpoint, path, storage_options)
        if self.pausing:
            self.pause()

    def write(self, checkpoint: dict[str, Any], file: BinaryIO) -> None:
        if not (self.pausing and self.during_write):
            super().write(checkpoint, file)
            return
        torch.save({"half": "written"}, file)
        file.flush()
        self.pause()

    def pause(self) -> None:
        self.marker.touch()
        time.sleep(600)  # until the test kills this process


class FullDiskCheckpointIO(AtomicCheckpointIO):
    """Fails the checkpoint of ``global_step == step`` half-way, as a full disk would."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def write(self, checkpoint: dict[str, Any], file: BinaryIO) -> None:
        if checkpoint["global_step"] != self.step:
            super().write(checkpoint, file)
            return
        file.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
