"""``cifar-lab models``: every backbone with its parameter count and forward cost on one 32x32 image, and with
``--speed`` its training throughput here (what an epoch will cost before one is started)."""

import argparse
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cifar_lab.errors import ConfigError
from cifar_lab.models.registry import available, create, families
from cifar_lab.reporting.tables import markdown_table


@dataclass(frozen=True)
class BackboneSummary:
    name: str
    parameters: int
    mflops: float  # FlopCounterMode counts a multiply-add as 2 FLOPs
    train_images_per_s: float | None = None  # with --speed: median over timed training steps


def summarize(name: str, num_classes: int = 10, **kwargs: Any) -> BackboneSummary:
    """Build ``name`` and count its FLOPs on one image in eval mode (the cost of inference)."""
    model = create(name, num_classes=num_classes, **kwargs).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 32, 32))
    parameters = sum(p.numel() for p in model.parameters())
    return BackboneSummary(name, parameters, counter.get_total_flops() / 1e6)


WARM_UP_STEPS = 3


def training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One SGD step of ``model`` on a fixed batch (forward, cross-entropy, backward, update): the network's
    share of a training step, without data loading, augmentation or logging."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def train_images_per_s(name: str, batch_size: int, min_time: float, num_classes: int = 10,
                       **kwargs: Any) -> float:
    """Training images per second of ``name`` on this machine's CPU threads (fp32, NCHW), after
    ``WARM_UP_STEPS``: ``torch.utils.benchmark``'s median over steps timed for at least ``min_time`` seconds."""
    # Importing torch.utils.benchmark warns that a CPU-only machine has no CUDA runtime: nothing to act on.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.benchmark import Timer

    model = create(name, num_classes=num_classes, **kwargs).train()
    images = torch.randn(batch_size, 3, 32, 32)
    labels = torch.randint(0, num_classes, (batch_size,))
    step = training_step(model, images, labels)
    for _ in range(WARM_UP_STEPS):  # the first steps of a process allocate and pick kernels
        step()
    measurement = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_time)
    return batch_size / measurement.median


def format_table(rows: list[BackboneSummary]) -> str:
    """A Markdown table, readable in a terminal and pasteable into docs."""
    speed = any(row.train_images_per_s is not None for row in rows)
    header = ["backbone", "parameters", "MFLOPs", *(["train images/s"] if speed else [])]
    body = [(f"`{row.name}`", f"{row.parameters:,}", f"{row.mflops:,.1f}",
             *([f"{row.train_images_per_s:,.0f}"] if speed else [])) for row in rows]
    return markdown_table(header, body, right_aligned=header[1:]).rstrip()


def parser() -> argparse.ArgumentParser:
    family_names = " ".join(f"'{family}:<name>'" for family in families())
    parser = argparse.ArgumentParser(
        prog="cifar-lab models",
        description="List backbones with parameter count and forward MFLOPs (2 per multiply-add) for one "
                    "3x32x32 image.",
    )
    parser.add_argument("names", nargs="*", help=f"backbones to list (default: all registered); also {family_names}")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--backbone_kwargs", type=yaml.safe_load, default={},
                        help="options for every listed backbone, as in model.backbone_kwargs, e.g. "
                             "'{cifar_stem: true}'")
    parser.add_argument("--speed", action="store_true",
                        help="also time training steps here (synthetic batches, fp32, this process's CPU threads) "
                             "and report training images/s")
    parser.add_argument("--batch_size", type=int, default=128, help="batch size of the timed steps (default 128)")
    parser.add_argument("--min_time", type=float, default=5.0,
                        help="seconds of timed steps per backbone, at least one step (default 5)")
    return parser


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if not isinstance(args.backbone_kwargs, dict):
        raise ConfigError(f"--backbone_kwargs must be a mapping such as '{{cifar_stem: true}}', "
                          f"not {args.backbone_kwargs!r}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.min_time <= 0:
        raise ConfigError(f"--min_time must be a number of seconds > 0, got {args.min_time}")
    names = args.names or available()
    rows = [summarize(name, args.num_classes, **args.backbone_kwargs) for name in names]
    if args.speed:
        rows = [replace(row, train_images_per_s=train_images_per_s(row.name, args.batch_size, args.min_time,
                                                                   args.num_classes, **args.backbone_kwargs))
                for row in rows]
    print(format_table(rows))
    if args.speed:
        print(f"\ntrain images/s: SGD steps of batch {args.batch_size} on synthetic 32x32 images, fp32, "
              f"{torch.get_num_threads()} CPU thread(s) of {platform.processor() or platform.machine()}, median "
              f"over at least {args.min_time:g} s (torch.utils.benchmark); no data loading, so a real epoch is slower.")
