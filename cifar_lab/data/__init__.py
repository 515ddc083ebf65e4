from cifar_lab.data.datamodule import CIFAR10DataModule

__all__ = ["CIFAR10DataModule"]
