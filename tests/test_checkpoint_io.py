import io as io_module
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.fabric.plugins.io import torch_io

from cifar_lab.checkpoint_io import AtomicCheckpointIO, check_state_dict_fits
from cifar_lab.cli import build_cli, main
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


@pytest.mark.parametrize("ckpt_path", ["s3://bucket/runs/last.ckpt", "registry:simple-cnn:latest", "best"])
def test_ckpt_paths_lightning_resolves_itself_pass_the_pre_check(
        ckpt_path: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    with pytest.raises(SystemExit) as exit_info:  # --print_config: parsed, printed, nothing run
        build_cli(["test", "--ckpt_path", ckpt_path, "--print_config"])
    assert exit_info.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["ckpt_path"] == ckpt_path


def test_a_missing_local_ckpt_path_is_refused_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    with pytest.raises(SystemExit):
        main(["test", "--ckpt_path", str(tmp_path / "gone.ckpt")])
    assert capsys.readouterr().err == f"cifar-lab: error: checkpoint {tmp_path / 'gone.ckpt'} does not exist\n"
