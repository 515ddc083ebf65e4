"""``cifar-lab``: LightningCLI wiring YAML to the DataModule, ImageClassifier and Trainer, its config checks,
``--resume``, and the dispatch of ``cifar-lab <tool>`` to ``cifar_lab.tools``. Nothing imports this package."""

from cifar_lab.cli.app import CifarLabCLI, build_cli, main

__all__ = ["CifarLabCLI", "build_cli", "main"]
