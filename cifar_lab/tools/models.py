"""``cifar-lab models``: every backbone with its parameter count and forward cost on one 32x32 image."""

import argparse
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from cifar_lab.errors import ConfigError
from cifar_lab.models.registry import available, create, families
from cifar_lab.reporting.tables import markdown_table


@dataclass(frozen=True)
class BackboneSummary:
    name: str
    parameters: int
    mflops: float  # FlopCounterMode counts a multiply-add as 2 FLOPs


def summarize(name: str, num_classes: int = 10, **kwargs: Any) -> BackboneSummary:
    """Build ``name`` and count its FLOPs on one image in eval mode (the cost of inference)."""
    model = create(name, num_classes=num_classes, **kwargs).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 32, 32))
    parameters = sum(p.numel() for p in model.parameters())
    return BackboneSummary(name, parameters, counter.get_total_flops() / 1e6)


def format_table(rows: list[BackboneSummary]) -> str:
    """A Markdown table, readable in a terminal and pasteable into docs."""
    body = [(f"`{row.name}`", f"{row.parameters:,}", f"{row.mflops:,.1f}") for row in rows]
    return markdown_table(["backbone", "parameters", "MFLOPs"], body, right_aligned=("parameters", "MFLOPs")).rstrip()


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
    return parser


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if not isinstance(args.backbone_kwargs, dict):
        raise ConfigError(f"--backbone_kwargs must be a mapping such as '{{cifar_stem: true}}', "
                          f"not {args.backbone_kwargs!r}")
    names = args.names or available()
    print(format_table([summarize(name, args.num_classes, **args.backbone_kwargs) for name in names]))
