from cifar_lab.data.datamodule import ImageDataModule

__all__ = ["ImageDataModule"]
