"""A run that names no profiler gets one that profiles nothing at no cost per hook; a named one is kept."""

from pathlib import Path

from lightning.pytorch.profilers import SimpleProfiler

from cifar_lab.cli import build_cli
from cifar_lab.profiler import NullProfiler


def trainer_profiler(npz_dir: Path, tmp_path: Path, *extra: str) -> object:
    cli = build_cli(["--data.data_dir", str(npz_dir), "--trainer.default_root_dir", str(tmp_path),
                     "--trainer.logger", "false", *extra], run=False)
    return cli.trainer.profiler


def test_a_run_that_names_no_profiler_gets_the_null_profiler(npz_dir: Path, tmp_path: Path) -> None:
    assert type(trainer_profiler(npz_dir, tmp_path)) is NullProfiler


def test_a_profiler_the_config_names_is_kept(npz_dir: Path, tmp_path: Path) -> None:
    assert isinstance(trainer_profiler(npz_dir, tmp_path, "--trainer.profiler", "simple"), SimpleProfiler)


def test_the_null_profilers_context_nests_and_lets_exceptions_through() -> None:
    profiler, ran = NullProfiler(), []
    with profiler.profile("[Callback]outer.on_train_batch_end"):
        with profiler.profile("[Callback]inner.on_train_batch_end"):
            ran.append("inner")
        ran.append("outer")
    try:
        with profiler.profile("[Strategy]training_step"):
            raise ValueError("from the step")
    except ValueError as error:
        ran.append(str(error))
    assert ran == ["inner", "outer", "from the step"]
    assert profiler.summary() == ""
