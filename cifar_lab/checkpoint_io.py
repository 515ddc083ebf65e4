"""Checkpoints written atomically, so a run killed while saving never leaves a truncated file."""

import os
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a hidden temporary file beside the target, then rename it over the target.

    ``os.replace`` is atomic on one filesystem: ``last.ckpt`` is always either the previous
    complete checkpoint or the new complete one, so a killed run can always resume from it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
