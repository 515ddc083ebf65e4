"""Benchmark of the fast path, every figure measured in this one run on this one machine.

  a. pipeline:  images/s of training batches delivered on the device: torchvision DataLoader
                (standard augmentation, 0 and N workers) vs the on-device loader.
  b. overhead:  images/s of training through Lightning (our ImageClassifier) vs a plain PyTorch
                loop with the same backbone, batch, optimizer, precision and loader.
  c. accuracy:  training wall time and test accuracy of the fast config through the CLI, per seed.
  d. cpu-recipe: the tutorial loop most CPU users start from (3 conv layers, Adam 1e-3, batch 512,
                unnormalised images through a per-image DataLoader, 12 epochs) vs ``configs/fast/cpu.yaml``
                and ``--seeds`` seeds of ``configs/fast/laptop.yaml`` through the CLI: seconds of
                ``Trainer.fit``, test accuracy, and the training seconds each needs to reach the tutorial's
                final accuracy, 85% and 90% (test accuracy ``--evals-per-epoch`` times an epoch, not timed).
  e. airbench:  on one GPU, the public airbench package's 94% trainer (``pip install airbench==0.1.8``, or
                ``--airbench-path`` to its unpacked source) vs ``configs/fast/airbench94.yaml`` through the
                CLI, ``--seeds`` runs each, each trainer in a subprocess of its own, timed the same way
                after a warm-up run; then section b on the same GPU. Without CUDA it says so and skips.
  f. instructions: on a CPU, under valgrind's callgrind (``apt install valgrind``), the instructions a training
                step takes in section b's three loops on a narrower proxy, counted over the steps after the
                warm-up: differences below the wall clock's noise on a shared machine. Without valgrind it says
                so and skips.

Each figure is a median over ``--repeats``. ``--quick`` shrinks everything to CPU size (and says
so in the table). Results go to stdout; ``--out DIR`` also writes ``benchmark.json`` and
``benchmark.md`` there. The dataset is read from ``$CIFAR_LAB_DATA`` (or ``--data-dir``).

    python scripts/benchmark.py --device cuda --out results/
    python scripts/benchmark.py --device cpu --quick
    python scripts/benchmark.py --device cpu --sections cpu-recipe --out results/
    python scripts/benchmark.py --device cpu --sections overhead,instructions --repeats 15 --overhead-steps 300
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from cifar_lab.cli import CifarLabCLI, build_cli
from cifar_lab.data import ImageDataModule, sources
from cifar_lab.data.datamodule import ImageArrayDataset
from cifar_lab.errors import CifarLabError
from cifar_lab.models import create
from cifar_lab.reporting.statistics import spread

ROOT = Path(__file__).resolve().parents[1]
FAST_CONFIG = ROOT / "configs" / "fast" / "airbench94.yaml"
CPU_CONFIG = ROOT / "configs" / "fast" / "cpu.yaml"
LAPTOP_CONFIG = ROOT / "configs" / "fast" / "laptop.yaml"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(measure: Callable[[], tuple[int, float]], repeats: int) -> float:
    """Median images/s over repeats of ``measure() -> (images, seconds)``."""
    rates = []
    for _ in range(repeats):
        images, seconds = measure()
        rates.append(images / seconds)
    return statistics.median(rates)


def drain(batches: Iterable, device: torch.device, limit: int) -> tuple[int, float]:
    """Time pulling ``limit`` batches onto ``device``."""
    start, images = time.perf_counter(), 0
    for i, (x, y) in enumerate(batches):
        if i == limit:
            break
        x = x.to(device, non_blocking=True)
        images += len(x)
    sync(device)
    return images, time.perf_counter() - start


def datamodule(data_dir: str, batch_size: int, **kwargs) -> ImageDataModule:
    dm = ImageDataModule(data_dir, download=False, batch_size=batch_size, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def bench_pipeline(args: argparse.Namespace, device: torch.device) -> dict:
    """a. images/s of the DataLoader path (0 and N workers) and the device loader."""
    limit = args.pipeline_batches
    results = {}
    for workers in (0, args.workers):
        dm = datamodule(args.data_dir, args.batch_size, num_workers=workers, pin_memory=device.type == "cuda")
        results[f"dataloader_{workers}_workers"] = median_rate(lambda: drain(dm.train_dataloader(), device, limit),
                                                              args.repeats)
    dm = datamodule(args.data_dir, args.batch_size, loader="device",
                    dtype="bfloat16" if device.type == "cuda" else "float32")
    trainer = L.Trainer(accelerator=device.type, devices=1, logger=False)  # the loader asks it for the device
    dm.trainer = trainer
    loader = dm.train_dataloader()
    drain(loader, device, 2)  # first use copies the split to the device
    results["device_loader"] = median_rate(lambda: drain(loader, device, limit), args.repeats)
    results["ratio_device_vs_dataloader"] = results["device_loader"] / results[f"dataloader_{args.workers}_workers"]
    return results


class StepTimer(L.Callback):
    """Time from the end of the warm-up steps to the end of training; with ``count_syncs`` (CUDA only),
    torch's sync debug mode warns at every host-device sync in that window instead, for counting."""

    def __init__(self, warmup: int, count_syncs: bool = False) -> None:
        self.warmup, self.count_syncs, self.start, self.seconds = warmup, count_syncs, 0.0, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            sync(trainer.strategy.root_device)
            self.start = time.perf_counter()
            if self.count_syncs:
                torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer: L.Trainer, *args) -> None:
        if self.count_syncs:
            torch.cuda.set_sync_debug_mode("default")
        sync(trainer.strategy.root_device)
        self.seconds = time.perf_counter() - self.start


@dataclass(frozen=True)
class Proxy:
    """A net and batch small enough that the host's share of a training step shows, and the SGD rate it trains at."""
    backbone: str
    backbone_kwargs: dict[str, Any] | None
    batch_size: int
    lr: float

    def network(self) -> nn.Module:
        torch.manual_seed(0)
        return create(self.backbone, **(self.backbone_kwargs or {}))

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(net.parameters(), lr=self.lr, momentum=0.85, nesterov=True, weight_decay=5e-4)

    def datamodule(self, data_dir: str) -> ImageDataModule:
        return datamodule(data_dir, self.batch_size, val_size=0, loader="device", drop_last=True, augment="none")


TIMED_PROXY = Proxy("lenet5", None, 32, 0.1)  # a step of about 5 ms on one CPU thread: Lightning's host time shows
# the network's own work a small share of a step's instructions (on lenet5 94%): about 2 ms a step on one thread
COUNTED_PROXY = Proxy("mlp", {"hidden": [16], "dropout": 0.0}, 32, 0.01)


class Stopwatch:
    """The wall-clock seconds from ``open`` to ``close``: a loop's timed steps."""

    seconds = 0.0

    def open(self) -> None:
        self.start = time.perf_counter()

    def close(self) -> None:
        self.seconds = time.perf_counter() - self.start


class InstructionCounter:
    """Switches callgrind's counting on at ``open`` and off at ``close``, in a process that runs under
    ``valgrind --tool=callgrind --instr-atstart=no``: its output file then counts a loop's steps alone."""

    def open(self) -> None:
        self.switch("on")

    def close(self) -> None:
        self.switch("off")

    @staticmethod
    def switch(state: str) -> None:
        subprocess.run(["callgrind_control", f"--instr={state}", str(os.getpid())], check=True, capture_output=True)


class StepWindow(L.Callback):
    """Opens ``window`` at the end of the warm-up's last step and closes it at the end of the last step (the
    checkpoint and teardown at the end of fit are not steps)."""

    def __init__(self, warmup: int, steps: int, window: Stopwatch | InstructionCounter) -> None:
        self.warmup, self.steps, self.window = warmup, steps, window

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.window.open()
        elif trainer.global_step == self.warmup + self.steps:
            self.window.close()


class BareModule(L.LightningModule):
    """Lightning at its barest: a network, its loss and SGD; run with no callbacks and no logger."""

    def __init__(self, net: nn.Module, optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> None:
        super().__init__()
        self.net, self.make_optimizer = net, optimizer

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.net(images), labels, label_smoothing=0.2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.net)


def plain_fit(proxy: Proxy, dm: ImageDataModule, warmup: int, steps: int, window: Stopwatch | InstructionCounter,
              args: argparse.Namespace) -> None:
    """The proxy trained by a plain PyTorch loop, ``window`` open over its steps after ``warmup``."""
    net, loader = proxy.network().train(), dm.train_dataloader()
    optimizer, batches = proxy.optimizer(net), iter(loader)
    for step in range(warmup + steps):
        if step == warmup:
            window.open()
        try:
            images, labels = next(batches)
        except StopIteration:  # a new epoch, as Lightning starts one
            batches = iter(loader)
            images, labels = next(batches)
        loss = F.cross_entropy(net(images), labels, label_smoothing=0.2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    window.close()


def bare_fit(proxy: Proxy, dm: ImageDataModule, warmup: int, steps: int, window: Stopwatch | InstructionCounter,
             args: argparse.Namespace) -> None:
    """The proxy trained by bare Lightning: no callbacks, no logger, no progress bar."""
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=warmup + steps, logger=False,
                        callbacks=[StepWindow(warmup, steps, window)], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(BareModule(proxy.network(), proxy.optimizer), train_dataloaders=dm.train_dataloader())


def cifar_lab_fit(proxy: Proxy, dm: ImageDataModule, warmup: int, steps: int, window: Stopwatch | InstructionCounter,
                  args: argparse.Namespace, *extra: str) -> L.Trainer:
    """The proxy trained by ``cifar-lab fit`` with everything a run gets (checkpoints, the divergence guard, the
    logger, the figure and speed callbacks, the progress bar); ``extra`` are more CLI arguments."""
    cli = build_cli(["--config", str(CPU_CONFIG), "--model.backbone", proxy.backbone,
                     "--model.backbone_kwargs", json.dumps(proxy.backbone_kwargs), "--model.lr_scheduler", "null",
                     "--model.channels_last", "false", "--model.norm_lr_scale", "1", "--model.label_smoothing", "0.2",
                     "--model.optimizer.init_args.lr", str(proxy.lr), "--model.optimizer.init_args.weight_decay",
                     "5e-4",  # the recipe's SGD at the proxy's rate, as Proxy.optimizer
                     "--trainer.callbacks", "[]", "--trainer.precision", "32-true", "--data.augment", "none",
                     "--data.batch_augment", "null", "--data.batch_size", str(proxy.batch_size), "--data.val_size", "0",
                     "--data.data_dir", args.data_dir, "--trainer.max_steps", str(warmup + steps),
                     "--trainer.max_epochs", "-1", "--trainer.default_root_dir", args.scratch,
                     "--trainer.logger.init_args.save_dir", args.scratch, *extra], run=False)
    cli.trainer.callbacks.append(StepWindow(warmup, steps, window))
    cli.datamodule.datasets = dm.datasets  # skip re-reading the array file
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli.trainer


PROXY_LOOPS = {"plain_loop": plain_fit, "bare_lightning": bare_fit, "lightning": cifar_lab_fit}
WARMUP_STEPS = 10


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread, where the host's share of a step shows; the thread count is process-wide, so it is
    put back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def time_fit(fit: Callable[..., Any], proxy: Proxy, dm: ImageDataModule, steps: int, args: argparse.Namespace) -> float:
    """Wall-clock seconds of one of ``PROXY_LOOPS``' steps after the warm-up."""
    stopwatch = Stopwatch()
    fit(proxy, dm, WARMUP_STEPS, steps, stopwatch, args)
    return stopwatch.seconds


def bench_host_overhead(args: argparse.Namespace) -> dict:
    """b. on a CPU: the host time Lightning adds to a training step, where a narrow net at a small batch on one
    thread makes it show. The same net, batches, loss and SGD three ways: a plain loop, bare Lightning (no
    callbacks, no logger) and ``cifar-lab fit`` with the callbacks, logger and divergence guard every run gets.
    Min and median ms per step over ``--repeats`` fits of ``--overhead-steps`` steps each (plus warm-up), and the
    median over repeats of each repeat's difference to the plain loop and to bare Lightning. Bare Lightning runs
    twice a repeat; the median difference of its two fits (``noise_...``) is the noise of such a difference here."""
    steps, proxy = args.overhead_steps, TIMED_PROXY
    dm = proxy.datamodule(args.data_dir)
    # bare Lightning twice a repeat: how far two fits of the same loop differ is this machine's noise
    loops = PROXY_LOOPS | {"bare_lightning_again": bare_fit}
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    with one_thread():
        for repeat in range(args.repeats):  # interleaved, every other repeat in reverse order: a drift in the
            # machine's speed, or a fit's place in the order, touches every loop alike
            for name, fit in list(loops.items())[::1 if repeat % 2 == 0 else -1]:
                seconds[name].append(time_fit(fit, proxy, dm, steps, args))
        # where the time goes: one more fit under Lightning's SimpleProfiler (its report to a scratch file)
        profiled = cifar_lab_fit(proxy, dm, WARMUP_STEPS, steps, Stopwatch(), args, "--trainer.profiler",
                                 "lightning.pytorch.profilers.SimpleProfiler", "--trainer.profiler.dirpath",
                                 args.scratch, "--trainer.profiler.filename", "host_overhead_profile").profiler
    results = {"proxy": f"{proxy.backbone}, batch {proxy.batch_size}, 1 thread, {steps} steps x {args.repeats} repeats"}
    for name, runs in seconds.items():
        results[f"{name}_ms_per_step_min"] = 1e3 * min(runs) / steps
        results[f"{name}_ms_per_step_median"] = 1e3 * statistics.median(runs) / steps
    results["lightning_extra_ms_per_step"] = results["lightning_ms_per_step_min"] - results["plain_loop_ms_per_step_min"]
    results["lightning_extra_vs_bare_ms_per_step"] = (results["lightning_ms_per_step_min"]
                                                      - results["bare_lightning_ms_per_step_min"])
    # Where the machine's speed drifts between fits, the difference within each repeat's trio tells more than mins.
    results["lightning_extra_ms_per_step_paired_median"] = paired_median_ms(seconds["lightning"],
                                                                            seconds["plain_loop"], steps)
    results["lightning_extra_vs_bare_ms_per_step_paired_median"] = paired_median_ms(seconds["lightning"],
                                                                                    seconds["bare_lightning"], steps)
    results["noise_bare_vs_bare_ms_per_step_paired_median"] = paired_median_ms(seconds["bare_lightning_again"],
                                                                               seconds["bare_lightning"], steps)
    results["callback_hooks_ms_per_step"] = per_step_hook_costs(profiled.recorded_durations, WARMUP_STEPS + steps)
    return results


def paired_median_ms(runs: list[float], baselines: list[float], steps: int) -> float:
    """The median over repeats of ``runs[i] - baselines[i]`` (seconds of ``steps`` steps), in ms per step."""
    return 1e3 * statistics.median(run - baseline for run, baseline in zip(runs, baselines)) / steps


def per_step_hook_costs(durations: dict[str, list[float]], steps: int, top: int = 8) -> dict[str, float]:
    """The callback hooks Lightning's profiler saw run at least once a step, by typical ms per step (the median
    call times the calls per step, so a one-off such as the first step's figure does not count), costliest first."""
    costs = {}
    for action, times in durations.items():
        if action.startswith("[Callback]") and len(times) >= steps:
            callback, hook = action.removeprefix("[Callback]").rsplit(".", 1)
            name = f"{callback.split('{')[0]}.{hook}"  # without the callback's state key
            costs[name] = 1e3 * statistics.median(times) * len(times) / steps
    return dict(sorted(costs.items(), key=lambda item: -item[1])[:top])


def bench_instructions(args: argparse.Namespace, device: torch.device) -> dict:
    """f. on a CPU: the instructions a training step takes in each of section b's three loops, counted by
    valgrind's callgrind over the steps after the warm-up, one subprocess a loop. Unlike the wall clock, a count
    is the same on a busy machine, so it tells apart differences smaller than a shared machine's noise. The proxy
    is narrower than section b's (``COUNTED_PROXY``), and ``cifar-lab fit`` runs without its progress bar: under
    callgrind a step takes a tenth of a second, and the bar, which redraws on a clock, would redraw at every step
    (at full speed, once in the 50 or more steps of a tenth of a second). Bare Lightning's ms per step, timed
    here without callgrind, converts the differences to ms."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions: valgrind's callgrind is not installed here (Debian/Ubuntu: apt install valgrind): skipped",
              flush=True)
        return {"skipped": "no valgrind"}
    proxy, steps = COUNTED_PROXY, args.overhead_steps
    dm = proxy.datamodule(args.data_dir)  # here first: a missing dataset is said before any subprocess starts
    counts = {name: count_instructions(name, args) / steps for name in PROXY_LOOPS}
    with one_thread():
        bare_seconds = [time_fit(bare_fit, proxy, dm, steps, args) for _ in range(args.repeats)]
    ms_per_million = 1e3 * statistics.median(bare_seconds) / steps / (counts["bare_lightning"] / 1e6)
    results = {"proxy": f"{proxy.backbone} {proxy.backbone_kwargs}, batch {proxy.batch_size}, 1 thread, {steps} "
                        f"steps, progress bar off"}
    results |= {f"{name}_m_instructions_per_step": count / 1e6 for name, count in counts.items()}
    for name, baseline in (("lightning_extra", "plain_loop"), ("lightning_extra_vs_bare", "bare_lightning")):
        extra = (counts["lightning"] - counts[baseline]) / 1e6
        results[f"{name}_m_instructions_per_step"] = extra
        results[f"{name}_ms_per_step_at_bare_lightnings_pace"] = extra * ms_per_million
    results["bare_lightning_ms_per_m_instructions"] = ms_per_million
    return results


def count_instructions(loop: str, args: argparse.Namespace) -> int:
    """The instructions of ``loop``'s steps after the warm-up: this script run again under callgrind with
    ``--count-loop``, its counting off but for those steps (``InstructionCounter``)."""
    out = Path(args.scratch) / f"{loop}.callgrind"
    run = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                          sys.executable, __file__, "--count-loop", loop, "--data-dir", args.data_dir,
                          "--overhead-steps", str(args.overhead_steps)], capture_output=True, text=True, check=False)
    if run.returncode != 0:  # its last lines, without valgrind's own (which start with ==pid==)
        said = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("==")][-5:]
        raise SystemExit(f"instructions: {loop} under callgrind failed: " + " | ".join(said))
    return callgrind_instructions(out)


def counted_loop(args: argparse.Namespace) -> None:
    """``--count-loop``: one of section b's loops on the counted proxy, callgrind counting its steps alone."""
    proxy = COUNTED_PROXY
    with one_thread():
        PROXY_LOOPS[args.count_loop](proxy, proxy.datamodule(args.data_dir), WARMUP_STEPS, args.overhead_steps,
                                     InstructionCounter(), args, *(["--trainer.enable_progress_bar", "false"]
                                                                   if args.count_loop == "lightning" else []))


def callgrind_instructions(path: Path) -> int:
    """The instructions callgrind counted in a run: its output file's ``totals`` line, the sum of its cost lines
    (its ``summary`` line says 0 where counting was switched on and off during the run)."""
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"{path} has no totals line: not a callgrind output file")


def bench_overhead(args: argparse.Namespace, device: torch.device) -> dict:
    """b. Lightning + ImageClassifier vs a plain loop: same backbone, batch, SGD, precision, loader (on a GPU; on
    a CPU, where host time shows only in a proxy, ``bench_host_overhead``)."""
    if device.type == "cpu":
        return bench_host_overhead(args)
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    steps, warmup = args.overhead_steps, 5
    dm = datamodule(args.data_dir, args.batch_size, val_size=0)  # as the fast config: every training image
    fit_args = ["--config", str(FAST_CONFIG), "--data.batch_size", str(args.batch_size),
                "--trainer.accelerator", device.type, "--trainer.devices", "1", "--trainer.precision", precision,
                "--trainer.logger", "false", "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false",
                "--trainer.default_root_dir", args.scratch, "--trainer.max_steps", str(warmup + steps), "--trainer.max_epochs", "-1",
                "--trainer.callbacks", "[]", "--model.lr_scheduler", "null"]

    def configured() -> CifarLabCLI:
        cli = build_cli(fit_args, run=False)
        cli.datamodule.datasets = dm.datasets  # skip re-reading the array file
        cli.datamodule.trainer = cli.trainer
        return cli

    def fit_ours(count_syncs: bool = False) -> tuple[StepTimer, int]:
        """The timer of one Lightning run and the host-device syncs torch warned about in it."""
        cli = configured()
        timer = StepTimer(warmup, count_syncs)
        cli.trainer.callbacks.append(timer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli.trainer.fit(cli.model, cli.datamodule)
        return timer, sum("synchronizing" in str(w.message) for w in caught)

    def ours() -> tuple[int, float]:
        timer, _ = fit_ours()
        return steps * args.batch_size, timer.seconds

    def plain() -> tuple[int, float]:
        loader = configured().datamodule.train_dataloader()  # the same loader settings as ours
        model = create("airbench").to(device).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.5, momentum=0.85, nesterov=True, weight_decay=0.0013305)
        batches = iter(loader)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
        for step in range(warmup + steps):
            if step == warmup:
                sync(device)
                start = time.perf_counter()
            try:
                images, labels = next(batches)
            except StopIteration:
                batches = iter(loader)
                images, labels = next(batches)
            with autocast:
                loss = F.cross_entropy(model(images), labels, label_smoothing=0.2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return steps * args.batch_size, time.perf_counter() - start

    results = {"plain_loop": median_rate(plain, args.repeats), "lightning": median_rate(ours, args.repeats)}
    results["ratio_lightning_vs_plain"] = results["lightning"] / results["plain_loop"]
    # The host time Lightning adds to a step; a GPU hides it only while it stays below the GPU's step time.
    results["lightning_extra_ms_per_step"] = 1e3 * args.batch_size * (1 / results["lightning"] - 1 / results["plain_loop"])
    if device.type == "cuda":  # each sync makes the host wait for the GPU, so host and GPU time add up
        _, syncs = fit_ours(count_syncs=True)
        results["lightning_host_syncs_per_step"] = syncs / steps
    return results


def bench_accuracy(args: argparse.Namespace, device: torch.device) -> dict:
    """c. A fast config through the CLI: training seconds and test accuracy (with its TTA) per seed."""
    extra = ["--trainer.accelerator", device.type, "--trainer.devices", "1", "--trainer.logger", "false",
             "--trainer.default_root_dir", args.scratch, "--data.data_dir", args.data_dir]  # checkpoints are written, as in any run
    if device.type == "cuda":
        extra += ["--trainer.precision", args.precision]
    extra += args.fit_args.split()
    if args.quick:
        extra += ["--trainer.max_steps", str(args.quick_steps), "--model.backbone_kwargs", "{widths: [32, 64, 64]}"]
    runs = []
    for seed in [None, *range(args.seeds)]:  # the first run warms up kernels and is not counted
        cli = build_cli(["--config", str(args.config), "--seed_everything", str(seed or 0), *extra,
                         *(["--trainer.max_steps", "20"] if seed is None else [])], run=False)
        cli.datamodule.prepare_data()
        cli.datamodule.setup("fit")  # the array file is read outside the timed part
        sync(device)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, cli.datamodule)
        sync(device)
        seconds = time.perf_counter() - start
        if seed is None:
            continue
        (metrics,) = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
        runs.append({"seed": seed, "train_seconds": seconds, "test_acc": metrics["test/acc"],
                     "steps": cli.trainer.global_step, "epochs": cli.trainer.current_epoch})
        print(f"seed {seed}: {seconds:.2f} s, test acc {metrics['test/acc']:.4f}", flush=True)
    accs = [r["test_acc"] for r in runs]
    return {
        "config": str(args.config) + (" (quick: narrow net, few steps)" if args.quick else ""),
        "runs": runs,
        "mean_test_acc": statistics.mean(accs),
        "std_test_acc": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "median_train_seconds": statistics.median(r["train_seconds"] for r in runs),
    }


def tutorial_cnn() -> nn.Sequential:
    """The 3-conv network of the common PyTorch CIFAR-10 tutorials: 32-64-128 filters with same padding,
    a max-pool after each, a 256-unit hidden layer; no BatchNorm, no dropout, torch's default init."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 10),
    )


@torch.no_grad()
def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable) -> float:
    correct = total = 0
    for images, labels in batches:
        correct += (predict(images).argmax(dim=1) == labels).sum().item()
        total += len(labels)
    return correct / total


def seconds_to_reach(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation whose test accuracy reaches ``target``."""
    return next((point["train_seconds"] for point in curve if point["test_acc"] >= target), None)


class AccuracyCurve:
    """Test accuracy ``evals_per_epoch`` times an epoch of a training run, with the model's test-time
    augmentation where it has one (``predict_logits``); the evaluations are left out of its training seconds."""

    def __init__(self, name: str, model: nn.Module, test_batches: Iterable, evals_per_epoch: int) -> None:
        self.name, self.model, self.test_batches, self.evals_per_epoch = name, model, test_batches, evals_per_epoch
        self.predict: Callable[[torch.Tensor], torch.Tensor] = getattr(model, "predict_logits", model)
        self.points: list[dict] = []
        self.start = self.eval_seconds = 0.0

    def begin(self) -> None:
        self.start = time.perf_counter()

    def record(self, epoch: float) -> None:
        now = time.perf_counter()
        self.model.eval()
        acc = accuracy(self.predict, self.test_batches)
        self.model.train()
        self.points.append({"epoch": round(epoch, 3), "train_seconds": now - self.start - self.eval_seconds,
                            "test_acc": acc})
        self.eval_seconds += time.perf_counter() - now
        print(f"{self.name} epoch {epoch:.2f}: {self.points[-1]['train_seconds']:.1f} s, test acc {acc:.4f}",
              flush=True)

    def record_if_due(self, batches_done: int, batches_per_epoch: int, epoch: int) -> None:
        """Record at the first batch past each ``1 / evals_per_epoch`` of an epoch, the epoch's end included."""
        if batches_done * self.evals_per_epoch % batches_per_epoch < self.evals_per_epoch:
            self.record(epoch + batches_done / batches_per_epoch)


def tutorial_curve(args: argparse.Namespace, epochs: int) -> list[dict]:
    """The tutorial loop on all 50,000 training images, with test accuracy ``--evals-per-epoch`` times an epoch."""
    dm = datamodule(args.data_dir, args.batch_size, val_size=0)
    to_float = v2.ToDtype(torch.float32, scale=True)  # no normalisation, as in the tutorials
    splits = {name: DataLoader(ImageArrayDataset(dm.datasets[name].images, dm.datasets[name].labels, to_float),
                               batch_size=args.cpu_batch_size, shuffle=name == "train", num_workers=args.workers,
                               persistent_workers=args.workers > 0)
              for name in ("train", "test")}
    torch.manual_seed(0)  # the same initial weights and batch order on every run of the benchmark
    model = tutorial_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = min(len(splits["train"]), args.cpu_limit_batches or len(splits["train"]))
    curve = AccuracyCurve("tutorial", model, splits["test"], args.evals_per_epoch)
    curve.begin()
    for epoch in range(epochs):
        for step, (images, labels) in enumerate(splits["train"], start=1):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curve.record_if_due(step, batches, epoch)
            if step == batches:
                break
    return curve.points


class AccuracyCurveCallback(L.Callback):
    """Feeds an :class:`AccuracyCurve` from a Lightning run, after the other callbacks' batch and epoch
    ends (so Lookahead's averaged weights are the ones evaluated at an epoch's end)."""

    def __init__(self, curve: AccuracyCurve) -> None:
        self.curve = curve

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        batches_done, batches = batch_idx + 1, trainer.num_training_batches
        if batches_done < batches:  # the epoch's end is recorded after its validation
            self.curve.record_if_due(batches_done, batches, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.curve.record(trainer.current_epoch + 1)


def recipe_run(args: argparse.Namespace, config: Path, seed: int | None = None, with_curve: bool = True) -> dict:
    """``config`` through the CLI, as ``cifar-lab fit`` runs it: the seconds of ``Trainer.fit`` (its validation,
    checkpoints and logging included, the curve's evaluations not), test accuracy ``--evals-per-epoch`` times an
    epoch when ``with_curve``, and the final test accuracy from ``trainer.test``."""
    # TensorBoard logging and checkpoints stay on, as in any run; they go to the scratch folder
    extra = ["--trainer.logger.init_args.save_dir", args.scratch, "--trainer.default_root_dir", args.scratch,
             "--data.data_dir", args.data_dir, *args.fit_args.split()]
    if seed is not None:
        extra += ["--seed_everything", str(seed)]
    if args.quick:
        extra += ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", str(args.cpu_limit_batches)]
    cli = build_cli(["--config", str(config), *extra], run=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")  # the array file is read outside the timed part, as in section c
    cli.datamodule.trainer = cli.trainer
    curve = AccuracyCurve(config.name, cli.model, cli.datamodule.test_dataloader(), args.evals_per_epoch)
    if with_curve:
        cli.trainer.callbacks.append(AccuracyCurveCallback(curve))
    curve.begin()
    cli.trainer.fit(cli.model, cli.datamodule)
    fit_seconds = time.perf_counter() - curve.start - curve.eval_seconds
    (metrics,) = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    return {"seed": cli.config.seed_everything, "precision": cli.config.trainer.precision,
            "epochs": cli.trainer.current_epoch, "fit_seconds": fit_seconds, "test_acc": metrics["test/acc"],
            "curve": curve.points}


def bench_cpu_recipe(args: argparse.Namespace, device: torch.device) -> dict:
    """d. The tutorial loop, configs/fast/cpu.yaml and ``--seeds`` seeds of configs/fast/laptop.yaml (the first with
    a test curve): test accuracy, seconds of ``Trainer.fit``, and training seconds to the tutorial's final accuracy,
    85% and 90%."""
    if device.type != "cpu":
        raise SystemExit("the cpu-recipe section measures the CPU: run it with --device cpu")
    tutorial = tutorial_curve(args, epochs=2 if args.quick else 12)
    today = recipe_run(args, CPU_CONFIG)
    laptop = [recipe_run(args, LAPTOP_CONFIG, seed, with_curve=seed == 0) for seed in range(args.seeds)]
    targets = {"tutorial": tutorial[-1]["test_acc"], "85%": 0.85, "90%": 0.90}

    def seconds_to(curve: list[dict]) -> dict[str, float | None]:
        return {name: seconds_to_reach(curve, target) for name, target in targets.items()}

    reached = {"tutorial": seconds_to(tutorial), "cpu.yaml": seconds_to(today["curve"]),
               "laptop.yaml": seconds_to(laptop[0]["curve"])}
    tutorial_seconds = reached["tutorial"]["tutorial"]  # it may touch its final accuracy before its end
    summary = seeded_summary(laptop, keys=("test_acc", "fit_seconds"))
    return {
        "evals_per_epoch": args.evals_per_epoch,
        "targets": targets,
        "seconds_to": reached,
        "ratio_to_tutorial_accuracy_vs_tutorial": {
            name: None if reached[name]["tutorial"] is None else reached[name]["tutorial"] / tutorial_seconds
            for name in ("cpu.yaml", "laptop.yaml")},
        "ratio_fit_seconds_laptop_vs_cpu": summary["mean_fit_seconds"] / today["fit_seconds"],
        "tutorial": {"epochs": tutorial[-1]["epoch"], "train_seconds": tutorial[-1]["train_seconds"],
                     "test_acc": tutorial[-1]["test_acc"], "curve": tutorial},
        "cpu.yaml": today,
        "laptop.yaml": summary,
    }


# Runs in a subprocess in the folder that holds cifar10/{train,test}.pt: importing airbench builds CUDA state
# and sets cudnn flags, which must not leak into our own runs. Prints one JSON line per seed.
AIRBENCH_RUNNER = """
import json, sys, time, torch
import airbench
airbench.warmup94(verbose=False)  # compiles kernels and tunes cudnn, as our warm-up run does
test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
for seed in range(int(sys.argv[1])):
    torch.manual_seed(seed)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model = airbench.train94(verbose=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    accuracy = airbench.evaluate(model, test, tta_level=2)  # its recipe's test-time augmentation
    print(json.dumps({"seed": seed, "train_seconds": seconds, "test_acc": accuracy}), flush=True)
"""


def write_airbench_data(data_dir: Path, folder: Path) -> Path:
    """CIFAR-10 from our array cache as airbench's ``CifarLoader`` reads it (``<folder>/cifar10/{train,test}.pt``:
    uint8 ``[N,32,32,3]`` images, int64 labels and the class names), so it downloads nothing."""
    arrays = sources.load_arrays(sources.prepare(data_dir, download=False))
    target = folder / "cifar10"
    target.mkdir(parents=True, exist_ok=True)
    for split, images, labels in (("train", arrays.train_images, arrays.train_labels),
                                  ("test", arrays.test_images, arrays.test_labels)):
        torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels),
                    "classes": list(arrays.classes)}, target / f"{split}.pt")
    return target


def seeded_summary(runs: list[dict], keys: tuple[str, ...] = ("test_acc", "train_seconds")) -> dict:
    """The seeded runs with the spread (mean, std, 95% t-interval: ``reporting.statistics.spread``, as ``compare``
    reports it) of each of ``keys``: by default their test accuracies and training seconds."""
    summary = {"runs": runs}
    for key in keys:
        values = spread([run[key] for run in runs])
        summary |= {f"mean_{key}": values.mean, f"std_{key}": values.std or 0.0,
                    f"ci95_{key}": [values.low, values.high]}
    return summary


def bench_airbench(args: argparse.Namespace, device: torch.device) -> dict:
    """e. airbench94 (the public package) vs our airbench94 recipe on the same GPU, then section b there."""
    if device.type != "cuda" or not torch.cuda.is_available():
        print("airbench: no CUDA device here; this section compares with airbench94 on a GPU only: skipped",
              flush=True)
        return {"skipped": "no CUDA device"}
    folder = Path(args.scratch) / "airbench"
    write_airbench_data(Path(args.data_dir), folder)
    path = os.pathsep.join(filter(None, [args.airbench_path, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    theirs = subprocess.run([sys.executable, "-c", AIRBENCH_RUNNER, str(args.seeds)], cwd=folder, env=env,
                            capture_output=True, text=True, check=False)
    if theirs.returncode != 0:
        raise SystemExit(f"airbench failed (pip install airbench==0.1.8, or --airbench-path): "
                         f"{theirs.stderr[-2000:]}")
    ours_out = folder / "ours"
    ours = subprocess.run([sys.executable, __file__, "--device", "cuda", "--sections", "accuracy", "--config",
                           str(FAST_CONFIG), "--seeds", str(args.seeds), "--precision", args.precision,
                           "--data-dir", args.data_dir, "--out", str(ours_out)], capture_output=True, text=True,
                          check=False)
    if ours.returncode != 0:
        raise SystemExit(f"our airbench94 runs failed: {ours.stderr[-2000:]}")
    airbench = seeded_summary([json.loads(line) for line in theirs.stdout.splitlines() if line.startswith("{")])
    ours_runs = json.loads((ours_out / "benchmark.json").read_text())["accuracy"]["runs"]
    cifar_lab = seeded_summary(ours_runs)
    ratio = cifar_lab["mean_train_seconds"] / airbench["mean_train_seconds"]
    return {"airbench94": airbench, "cifar_lab": cifar_lab, "ratio_train_seconds_ours_vs_airbench": ratio,
            "overhead": bench_overhead(args, device)}


def markdown(report: dict) -> str:
    env, a, b, c = report["environment"], report.get("pipeline"), report.get("overhead"), report.get("accuracy")
    d, e, f = report.get("cpu-recipe"), report.get("airbench"), report.get("instructions")
    lines = [f"Device: {env['device']}; torch {env['torch']}, lightning {env['lightning']}"
             + (" (quick)" if env["quick"] else "")]
    counted = f if f and "skipped" not in f else None
    if a or b or c or counted:
        lines += [f"Sections a-c: batch {env['batch_size']}, medians over {env['repeats']} repeats", "",
                  "| measurement | images/s or value |", "| --- | --- |"]
    for section in (a, b, counted):
        for key, value in (section or {}).items():
            for name, figure in value.items() if isinstance(value, dict) else [(None, value)]:  # per-hook costs
                text = figure if isinstance(figure, str) else f"{figure:,.2f}" if name is None else f"{figure:.3f}"
                lines.append(f"| {key if name is None else f'{key}: {name}'} | {text} |")
    if c:
        lines.append(f"| fast config test acc, mean ± std over {len(c['runs'])} seeds | "
                     f"{100 * c['mean_test_acc']:.2f}% ± {100 * c['std_test_acc']:.2f} |")
        lines.append(f"| fast config training seconds (median) | {c['median_train_seconds']:.2f} |")
    if d:
        lines += cpu_recipe_table(d)
    if e and "skipped" not in e:
        seeds = len(e["airbench94"]["runs"])
        lines += ["", f"| trainer ({seeds} seeds) | test acc, mean ± std | training s, mean ± std |",
                  "| --- | --- | --- |"]
        for name, runs in (("airbench94 (airbench==0.1.8)", e["airbench94"]),
                           ("configs/fast/airbench94.yaml", e["cifar_lab"])):
            lines.append(f"| {name} | {100 * runs['mean_test_acc']:.2f}% ± {100 * runs['std_test_acc']:.2f} | "
                         f"{runs['mean_train_seconds']:.2f} ± {runs['std_train_seconds']:.2f} |")
        lines.append(f"\nTraining time, ours / airbench94: {e['ratio_train_seconds_ours_vs_airbench']:.3f}; "
                     f"Lightning / plain loop images/s: {e['overhead']['ratio_lightning_vs_plain']:.3f}, "
                     f"host-device syncs per step: {e['overhead'].get('lightning_host_syncs_per_step', 'n/a')}")
    elif e:
        lines.append(f"\nairbench section: {e['skipped']}, not run")
    if f and not counted:
        lines.append(f"\ninstructions section: {f['skipped']}, not run")
    return "\n".join(lines) + "\n"


def cpu_recipe_table(d: dict) -> list[str]:
    """Section d as a table: one row per recipe, mean ± std where it ran several seeds."""
    def seconds(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.0f}"

    def plus_minus(runs: dict, key: str, scale: float, digits: int) -> str:
        std = f" ± {scale * runs[f'std_{key}']:.{digits}f}" if len(runs["runs"]) > 1 else ""
        return f"{scale * runs[f'mean_{key}']:.{digits}f}{std}"

    tutorial, today, laptop = d["tutorial"], d["cpu.yaml"], d["laptop.yaml"]
    first = laptop["runs"][0]
    reached = {name: " | ".join(seconds(value) for value in to.values()) for name, to in d["seconds_to"].items()}
    lines = ["", "| run | seeds | precision | epochs | Trainer.fit s | test acc % | s to the tutorial's accuracy "
             "| s to 85% | s to 90% |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| tutorial loop | 1 | 32-true | {tutorial['epochs']:g} | {tutorial['train_seconds']:.0f} (training) | "
             f"{100 * tutorial['test_acc']:.2f} | {reached['tutorial']} |",
             f"| configs/fast/cpu.yaml | 1 | {today['precision']} | {today['epochs']} | {today['fit_seconds']:.0f} | "
             f"{100 * today['test_acc']:.2f} | {reached['cpu.yaml']} |",
             f"| configs/fast/laptop.yaml | {len(laptop['runs'])} | {first['precision']} | {first['epochs']} | "
             f"{plus_minus(laptop, 'fit_seconds', 1, 0)} | {plus_minus(laptop, 'test_acc', 100, 2)} | "
             f"{reached['laptop.yaml']} (seed 0) |",
             "", f"Tutorial's final accuracy: {100 * d['targets']['tutorial']:.2f}%. Test accuracy measured "
             f"{d['evals_per_epoch']} times an epoch, evaluation not timed."]
    lines.append(f"Trainer.fit seconds, laptop.yaml (mean) / cpu.yaml: {d['ratio_fit_seconds_laptop_vs_cpu']:.3f}")
    for name, ratio in d["ratio_to_tutorial_accuracy_vs_tutorial"].items():
        lines.append(f"Seconds to the tutorial's final accuracy, {name} / tutorial: "
                     + ("not reached" if ratio is None else f"{ratio:.3f}"))
    return lines


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


SECTIONS = {"pipeline": bench_pipeline, "overhead": bench_overhead, "accuracy": bench_accuracy,
            "cpu-recipe": bench_cpu_recipe, "airbench": bench_airbench, "instructions": bench_instructions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: fewer batches, steps and seeds")
    parser.add_argument("--sections", default="pipeline,overhead,accuracy")
    parser.add_argument("--data-dir", default=os.environ.get("CIFAR_LAB_DATA", "./data"))
    parser.add_argument("--out", type=Path, help="folder for benchmark.json and benchmark.md")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--overhead-steps", type=positive_int, help="timed steps of section b (default 100, quick 5)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--config", type=Path, default=FAST_CONFIG, help="the accuracy runs' recipe")
    parser.add_argument("--precision", default="bf16-mixed", help="the accuracy run's precision on a GPU")
    parser.add_argument("--fit-args", default="", help="extra CLI arguments for the accuracy runs")
    parser.add_argument("--airbench-path", help="airbench: a folder holding the airbench package's source, when it "
                                                "is not installed")
    parser.add_argument("--evals-per-epoch", type=positive_int, default=4,
                        help="cpu-recipe: test accuracy this many times an epoch (not timed)")
    parser.add_argument("--count-loop", choices=list(PROXY_LOOPS), help=argparse.SUPPRESS)  # instructions' subprocess
    args = parser.parse_args()
    unknown = [name for name in args.sections.split(",") if name not in SECTIONS]
    if unknown:
        parser.error(f"--sections: no section {', '.join(unknown)}; the sections are {', '.join(SECTIONS)}")
    args.batch_size = 1024
    args.pipeline_batches = 10 if args.quick else 44
    args.overhead_steps = args.overhead_steps or (5 if args.quick else 100)
    args.quick_steps = 20
    args.cpu_batch_size = 64 if args.quick else 512
    args.cpu_limit_batches = 10 if args.quick else None
    if args.quick:
        args.seeds = min(args.seeds, 2)
    device = torch.device(args.device)
    args.scratch = tempfile.mkdtemp(prefix="cifar_lab_benchmark_")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report = {"environment": {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "lightning": L.__version__, "batch_size": args.batch_size,
        "repeats": args.repeats, "quick": args.quick, "precision": args.precision, "fit_args": args.fit_args,
    }}
    try:
        if args.count_loop:
            counted_loop(args)
        else:
            run_sections(args, device, report)
    except CifarLabError as err:  # bad input (a missing dataset, a bad option): one line, as the CLI says it
        raise SystemExit(f"benchmark: error: {' '.join(str(err).split())}") from None


def run_sections(args: argparse.Namespace, device: torch.device, report: dict) -> None:
    """Each of ``--sections`` in turn, its figures printed as it ends; then the table, and the files of ``--out``."""
    for name in args.sections.split(","):
        report[name] = SECTIONS[name](args, device)
        print(json.dumps({name: report[name]}, indent=1), flush=True)
    print(markdown(report))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "benchmark.json").write_text(json.dumps(report, indent=1))
        (args.out / "benchmark.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
