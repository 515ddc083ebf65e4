"""What the tests share: tiny CIFAR-format data, running ``cifar-lab`` in a subprocess, reading results back.

Tiny datasets carry a class-dependent colour and stripe pattern plus noise, so a model can learn them in
a few steps while the data still has CIFAR-10's exact shapes, dtypes and file layouts. Fixtures built
on these live in ``conftest.py``; tests import helpers from here, always as ``tests.helpers``.
"""

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lab.cli import main
from cifar_lab.data.sources import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
)
from cifar_lab.reporting.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CLASSES = CIFAR10_CLASSES
TRAIN_PER_BATCH = 40  # 5 batch files -> 200 training images
TEST_SIZE = 60


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 [32,32,3] images whose colour and stripe period depend on the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n).astype(np.int64)
    palette = rng.integers(0, 256, (len(CLASSES), 3))
    rows = np.arange(32)[None, :, None, None]
    stripes = (rows // (labels[:, None, None, None] % 4 + 1)) % 2
    base = palette[labels][:, None, None, :] * (0.5 + 0.5 * stripes)
    images = np.clip(base + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return images, labels


def write_npz(folder: Path, n_train: int = 300, n_test: int = TEST_SIZE) -> Path:
    train_images, train_labels = make_images(n_train, seed=1)
    test_images, test_labels = make_images(n_test, seed=2)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar10.npz"
    np.savez(path, train_images=train_images, train_labels=train_labels, test_images=test_images,
             test_labels=test_labels, classes=np.asarray(CLASSES))
    return path


def cifar100_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images with CIFAR-100 fine labels (0-99) and coarse labels (0-19, here fine % 20)."""
    images, _ = make_images(n, seed)
    fine = np.random.default_rng(seed).integers(0, len(CIFAR100_CLASSES), n).astype(np.int64)
    return images, fine, fine % len(CIFAR100_COARSE_CLASSES)


def write_cifar100_npz(folder: Path, n_train: int = 300, n_test: int = TEST_SIZE) -> Path:
    """The array cache of CIFAR-100, both label sets (as ``sources.read_batches`` writes it)."""
    (train_images, train_fine, train_coarse), (test_images, test_fine, test_coarse) = (
        cifar100_images(n_train, seed=1), cifar100_images(n_test, seed=2))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar100.npz"
    np.savez(path, train_images=train_images, train_labels=train_fine, train_coarse_labels=train_coarse,
             test_images=test_images, test_labels=test_fine, test_coarse_labels=test_coarse,
             classes=np.asarray(CIFAR100_CLASSES), coarse_classes=np.asarray(CIFAR100_COARSE_CLASSES))
    return path


def _dump(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj))
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_batches(data_dir: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    """torchvision's cifar-10-batches-py layout; returns (train_list, test_list, meta md5)."""
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(name: str, n: int, seed: int) -> tuple[str, str]:
        images, labels = make_images(n, seed)
        flat = images.transpose(0, 3, 1, 2).reshape(n, -1)  # CIFAR's row layout: R, G, B planes
        return name, _dump(folder / name, {"data": flat, "labels": labels.tolist()})

    train_list = [batch(f"data_batch_{i}", TRAIN_PER_BATCH, seed=10 + i) for i in range(1, 6)]
    test_list = [batch("test_batch", TEST_SIZE, seed=20)]
    meta_md5 = _dump(folder / "batches.meta", {"label_names": CLASSES})
    return train_list, test_list, meta_md5


def write_cifar100_batches(data_dir: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    """torchvision's cifar-100-python layout (one train and one test file, fine and coarse labels); returns
    (train_list, test_list, meta md5)."""
    folder = data_dir / "cifar-100-python"
    folder.mkdir(parents=True)

    def batch(name: str, n: int, seed: int) -> tuple[str, str]:
        images, fine, coarse = cifar100_images(n, seed)
        flat = images.transpose(0, 3, 1, 2).reshape(n, -1)
        entry = {"data": flat, "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()}
        return name, _dump(folder / name, entry)

    meta = {"fine_label_names": CIFAR100_CLASSES, "coarse_label_names": CIFAR100_COARSE_CLASSES}
    return [batch("train", 5 * TRAIN_PER_BATCH, seed=30)], [batch("test", TEST_SIZE, seed=31)], _dump(folder / "meta", meta)


def read_scalars(events: Path, tag: str) -> dict[int, float]:
    """step -> value of one TensorBoard tag, from an event file or a run folder (all its event files)."""
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def learning_rates(make_schedule, steps: int) -> list[float]:
    """The learning rate of each of the first ``steps`` steps of ``make_schedule(optimizer)`` over an SGD at lr 1,
    which makes each value the schedule's factor."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = make_schedule(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def assert_same_weights(a: Path, b: Path) -> None:
    """Two checkpoints hold bit-for-bit the same tensors under the same names."""
    first, second = (torch.load(path, weights_only=True)["state_dict"] for path in (a, b))
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


TINY_DATA = ["--data.val_size", "50", "--data.batch_size", "32", "--data.num_workers", "0"]
# Runs that are about something else skip the figures, the model graph and the end-of-test report.
NO_FIGURES = ["--figures.every_n_epochs", "0", "--figures.first_layer_filters", "false", "--figures.training_images",
              "0", "--figures.reliability_diagram", "false", "--trainer.logger.init_args.log_graph", "false",
              "--report.curves", "false", "--report.reliability_diagram", "false"]
SMOKE = ["--config", str(CONFIGS / "simple_cnn.yaml"), "--config", str(CONFIGS / "trainer/cpu.yaml"),
         "--config", str(CONFIGS / "trainer/smoke.yaml"), *TINY_DATA]


TIMING_TAGS = ("train/epoch_time_s", "train/images_per_s")


def every_n_steps(steps: int) -> list[str]:
    """Options for a mid-epoch ``last.ckpt`` every ``steps`` optimizer steps (instead of every 10 minutes)."""
    return ["--mid_epoch_checkpoint.every_n_minutes", "null", "--mid_epoch_checkpoint.every_n_train_steps", str(steps)]


def assert_same_scalars(run: Path, reference: Path) -> None:
    """Every scalar but the timings, at every step, as the readers see it (a step logged twice counts once)."""
    ours, theirs = load_run(run).scalars, load_run(reference).scalars
    assert ours.keys() == theirs.keys()
    for tag in set(theirs) - set(TIMING_TAGS):
        assert [(e.step, repr(e.value)) for e in ours[tag]] == [(e.step, repr(e.value)) for e in theirs[tag]], tag


def pause_at(step: int, marker: Path, during_write: bool = False) -> list[str]:
    """Options that make the run stop at the checkpoint of ``step`` (see tests/kill_points.py)."""
    plugin = {"class_path": "tests.kill_points.PausingCheckpointIO",
              "init_args": {"step": step, "marker": str(marker), "during_write": during_write}}
    return ["--trainer.plugins", json.dumps(plugin)]


def fit_until_killed(cwd: Path, data_dir: Path, *args: str) -> None:
    """Start ``fit`` with ``args`` (which include a pause_at), SIGKILL it once it pauses there."""
    marker = cwd / "paused"
    marker.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-m", "cifar_lab", "fit", *args], cwd=cwd, env=cli_env(data_dir),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: DDP's other process too
    assert process.wait() == -signal.SIGKILL, process.stderr.read()[-3000:]


PRINT_CONFIG_LOCK = threading.Lock()


class ThreadStdout(io.TextIOBase):
    """``sys.stdout`` that a thread can redirect to a buffer of its own while the others keep writing through."""

    def __init__(self, through: io.TextIOBase) -> None:
        self.through, self.local = through, threading.local()

    def write(self, text: str) -> int:
        return (getattr(self.local, "buffer", None) or self.through).write(text)

    def flush(self) -> None:
        (getattr(self.local, "buffer", None) or self.through).flush()


def asked_config_in_process(command: list[str]) -> dict:
    """What ``experiment.asked_config`` (a ``fit --print_config`` subprocess) returns, in this process: for the
    suite and sweep drivers that tests run in-process (the tests of a driver in a subprocess run the real one).
    A driver with ``--jobs 2`` asks from two threads while the other prints progress: one asks at a time, and what
    the other threads print meanwhile goes through to stdout, not into the config."""
    with PRINT_CONFIG_LOCK:
        stdout = ThreadStdout(sys.stdout)
        stdout.local.buffer = out = io.StringIO()
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit):
            main([*command[1:], "--print_config"])
    return yaml.safe_load(out.getvalue())


def cli_env(data_dir: Path, env: dict | None = None) -> dict:
    # PYTHONPATH: run the code of this checkout, whatever copy of cifar_lab is installed.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "CIFAR_LAB_DATA": str(data_dir), "PYTHONPATH": pythonpath, **(env or {})}


def cifar_lab(*args: str, cwd: Path, data_dir: Path, env: dict | None = None,
              module: str = "cifar_lab") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(data_dir, env),
                          capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cifar-lab: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def tiny_trainer(**kwargs) -> L.Trainer:
    options = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False}
    return L.Trainer(**{**options, **kwargs})


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_error_line(tmp_path: Path, data_dir: Path, *args: str, subcommand: str = "fit") -> str:
    """``cifar-lab <subcommand>`` with the smoke options, through the CLI's entry point in this process (a
    subprocess only adds start-up time; ``cifar_lab`` runs one): its one error line, after exit code 1."""
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.chdir(tmp_path)
        patch.setenv("CIFAR_LAB_DATA", str(data_dir))
        patch.setattr(sys, "argv", ["cifar-lab"])
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, *SMOKE, *args])
    assert exit_info.value.code == 1, stderr.getvalue()[-3000:]
    lines = [line for line in stderr.getvalue().splitlines() if line.startswith("cifar-lab: error:")]
    assert len(lines) == 1, stderr.getvalue()[-3000:]
    return lines[0]
