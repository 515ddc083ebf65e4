import io as io_module
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.io import torch_io

from cifar_lab.checkpoint_io import AtomicCheckpointIO, check_state_dict_fits
from cifar_lab.errors import CheckpointError


def test_checkpoint_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 3, "w": torch.ones(2)}, path)
    assert torch.load(path)["step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_save_killed_half_way_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def write_half_then_die(checkpoint: dict, filepath: str) -> None:
        buffer = io_module.BytesIO()
        torch.save(checkpoint, buffer)
        Path(filepath).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise KeyboardInterrupt  # as if the process were stopped mid-write

    monkeypatch.setattr(torch_io, "_atomic_save", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.ones(1000)}, path)
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_weights_of_another_shape_are_refused_naming_both_networks() -> None:
    here, there = torch.nn.Linear(4, 10), torch.nn.Linear(4, 5)
    check_state_dict_fits(here, torch.nn.Linear(4, 10).state_dict(), expected="ten", found="ten")
    with pytest.raises(CheckpointError, match=r"holds five but this run builds ten \(0 missing and 0 unexpected "
                                              r"tensors, bias is \[5\] there but \[10\] here\)"):
        check_state_dict_fits(here, there.state_dict(), expected="ten", found="five")
