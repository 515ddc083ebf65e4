import errno
import io as io_module
import os
import sys
import tempfile
from pathlib import Path

import fsspec
import pytest
import torch
import yaml

from cifar_lab.checkpoint_io import AtomicCheckpointIO, check_state_dict_fits
from cifar_lab.cli import build_cli, main
from cifar_lab.errors import CheckpointError
from tests.helpers import NO_FIGURES, SMOKE


def test_checkpoint_is_written_once_beside_its_target_then_renamed_over_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    staging = tmp_path / "system-temp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))  # where fsspec's local transaction would stage it
    saves, renames = [], []
    real_save, real_replace = torch.save, os.replace
    monkeypatch.setattr(torch, "save", lambda obj, f: (saves.append(f), real_save(obj, f)))
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), real_replace(src, dst)))
    AtomicCheckpointIO().save_checkpoint({"step": 3, "w": torch.ones(2)}, path)
    assert torch.load(path)["step"] == 3
    assert len(saves) == 1 and renames == [(path.with_name(".last.ckpt.tmp"), path)]
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"] and not list(staging.iterdir())


class FailingWrite(AtomicCheckpointIO):
    """Writes half of the checkpoint, then fails as ``error`` says (or is interrupted)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def write(self, checkpoint: dict, file) -> None:
        buffer = io_module.BytesIO()
        torch.save(checkpoint, buffer)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise self.error


def test_save_interrupted_half_way_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    with pytest.raises(KeyboardInterrupt):
        FailingWrite(KeyboardInterrupt()).save_checkpoint({"step": 2, "w": torch.ones(1000)}, path)
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_full_disk_is_a_one_line_error_naming_the_folder_and_the_previous_checkpoint_loads(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "state_dict": {}}, path)
    full = FailingWrite(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(CheckpointError) as error:
        full.save_checkpoint({"step": 2, "state_dict": {"w": torch.ones(1000)}}, path)
    assert str(error.value) == (f"could not write checkpoint last.ckpt into {path.parent} (No space left on device); "
                                f"the checkpoints already there are intact: free space or fix the folder, then "
                                f"resume the run")
    assert AtomicCheckpointIO().load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_remote_checkpoints_go_through_fsspec(npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    memory = fsspec.filesystem("memory")
    dirpath = f"memory://{tmp_path.name}/checkpoints"
    main(["fit", *SMOKE, *NO_FIGURES, "--data.data_dir", str(npz_dir), "--trainer.logger.init_args.save_dir",
          str(tmp_path / "runs"), "--checkpoint.dirpath", dirpath, "--mid_epoch_checkpoint.every_n_minutes", "null",
          "--mid_epoch_checkpoint.every_n_train_steps", "3"])
    names = sorted(Path(p).name for p in memory.ls(f"/{tmp_path.name}/checkpoints", detail=False))
    assert names[-1] == "last.ckpt" and len(names) == 2  # the best one and last.ckpt, nothing staged beside them
    checkpoint = AtomicCheckpointIO().load_checkpoint(f"{dirpath}/last.ckpt")
    assert checkpoint["global_step"] == 4
    assert list(tmp_path.iterdir()) == [tmp_path / "runs"]  # no local folder named after the URL
    memory.rm(f"/{tmp_path.name}", recursive=True)


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
