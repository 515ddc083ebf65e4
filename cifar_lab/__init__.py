"""cifar_lab: compare CNN backbones on CIFAR-10 with reproducible LightningCLI configs."""

from cifar_lab.data import ImageDataModule
from cifar_lab.module import ImageClassifier

__all__ = ["ImageDataModule", "ImageClassifier"]
