"""What ``cifar-lab <tool>`` runs: each tool is a module here with ``parser()`` (its argument parser) and
``main(argv: list[str]) -> None`` (parse, then run).

Tools work on run folders and checkpoints; they use the building blocks below them and never the CLI.
"""

import importlib
from collections.abc import Callable
from typing import Any

PARENT_PID_ENV = "CIFAR_LAB_PARENT_PID"  # set by `cifar-lab experiment` for its runs: they end when it does
TOOLS = {  # `cifar-lab <tool> ...` -> the module that runs it (imported only when asked for)
    "compare": "cifar_lab.tools.compare",
    "experiment": "cifar_lab.tools.experiment",
    "export": "cifar_lab.tools.export",
    "models": "cifar_lab.tools.models",
    "robustness": "cifar_lab.tools.robustness",
    "sweep": "cifar_lab.tools.sweep",
    "visualize": "cifar_lab.tools.visualize",
}


def tool_main(name: str) -> Callable[[list[str]], None]:
    """The ``main`` of the tool ``name`` (one of ``TOOLS``)."""
    return importlib.import_module(TOOLS[name]).main


def tool_parser(name: str) -> Any:
    """The argument parser of the tool ``name``: argparse's, or jsonargparse's for ``export``."""
    return importlib.import_module(TOOLS[name]).parser()
