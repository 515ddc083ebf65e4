"""CIFAR-10 as a LightningDataModule: a fixed train/val split of the 50,000 training images,
augmentation on the training split only, and the class names for the model to link to."""

import os
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_deprecation
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cifar_lab.data import sources
from cifar_lab.data.augment import Erasing, Normalization, build_transform
from cifar_lab.data.device_loader import NO_AUGMENT, BatchAugment, DeviceLoader
from cifar_lab.data.image_files import load_images
from cifar_lab.data.resumable import ResumableDataLoader, SampleKey, SeededSampler, run_seed, sample_seed, seeded_rng
from cifar_lab.errors import ConfigError

DATA_DIR_ENV = "CIFAR_LAB_DATA"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The device loader's equivalent of each augment preset.
BATCH_PRESETS = {"none": NO_AUGMENT, "standard": BatchAugment(padding=4, padding_mode="zeros", flip="random")}


class ImageArrayDataset(Dataset):
    """Images held as one uint8 [N,3,H,W] tensor; each item goes through a v2 transform.

    An item asked for by a ``SampleKey`` (the training loader's) is augmented under a generator seeded
    from that key, so its augmentation is the same in any worker process and after a resume.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, int]:
        if isinstance(key, int):
            return self.transform(tv_tensors.Image(self.images[key])), int(self.labels[key])
        index = key[-1]
        with seeded_rng(sample_seed(*key)):
            return self.transform(tv_tensors.Image(self.images[index])), int(self.labels[index])


def class_balanced_subset(indices: torch.Tensor, labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """The first ``fraction`` of each class's images in ``indices`` (at least one each), in ``indices``' order.

    Taking a share per class rather than the first ``fraction`` of ``indices`` keeps a small subset's class
    balance equal to the full set's, so a 10% run differs from a full run in size only.
    """
    keep = torch.zeros(len(indices), dtype=torch.bool)
    for label in labels[indices].unique():
        members = torch.nonzero(labels[indices] == label).flatten()
        keep[members[:max(1, round(fraction * len(members)))]] = True
    return indices[keep]


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV, "./data")


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 train/val/test loaders.

    Args:
        data_dir: folder holding ``cifar10.npz`` or ``cifar-10-batches-py/``; null means
            ``$CIFAR_LAB_DATA`` or ``./data``, so one config runs on machines with different layouts.
        download: fetch the dataset with torchvision if it is not on disk.
        batch_size: images per batch on each device.
        num_workers: DataLoader worker processes. A training image's augmentation depends on the run's seed, the
            epoch and the image alone, so any number of workers (persistent or not) gives the same batches.
        persistent_workers: keep the workers alive between epochs (with ``num_workers > 0``): no start-up cost
            per epoch, at the price of their memory between epochs.
        pin_memory: page-locked host memory for faster copies to a GPU.
        val_size: training images held out for validation (the test split is never used for it).
        split_seed: seed of the train/val split, independent of the run's seed.
        train_fraction: share of the training images to train on, in (0, 1]: a fixed subset (by ``split_seed``)
            that keeps each class's share, drawn after the validation images are held out, so learning from
            little data (where augmentation and pretraining matter) is measured on the same validation set.
        augment: training augmentation: a preset name (``none``, ``standard``, ``color``, ``autoaugment``,
            ``randaugment``, ``trivialaugment``; see ``cifar_lab.data.augment.PRESETS``) or a list of
            ``torchvision.transforms.v2`` transforms of uint8 images (``class_path``/``init_args`` in YAML).
        erasing: ``cutout`` (a 16x16 square of the mean colour) or ``random_erasing`` on the normalised
            training images, after ``augment``; DataLoader path only (the device loader has ``batch_augment.cutout``).
        normalize: how pixels are scaled for the model, in every split and loader: ``dataset`` (the CIFAR-10
            training set's per-channel mean and std), ``half`` (mean 0.5, std 0.5: pixels in [-1, 1], as many
            tutorials do) or ``none`` (pixels in [0, 1]). Saved with the run, so test, predict, export and the
            figures undo or repeat the same scaling.
        loader: ``dataloader`` (torchvision transforms per image in worker processes) or ``device``
            (each split held on the training device, augmented a batch at a time: much faster).
        batch_augment: the device loader's augmentation; null means the ``augment`` preset's.
        eval_batch_size: batch size for val/test/predict; null means ``batch_size``.
        drop_last: drop the last incomplete training batch.
        dtype: dtype of the device loader's image batches.
        channels_last: deprecated; ``model.channels_last`` sets the memory format of the model and its batches.
        predict_path: PNG/JPEG file, folder or glob for ``predict``; null predicts the test split.
    """

    num_classes = 10
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(
        self,
        data_dir: str | None = None,
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 4,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        val_size: int = 5000,
        split_seed: int = 0,
        train_fraction: float = 1.0,
        augment: str | list[v2.Transform] = "standard",
        erasing: Erasing | None = None,
        normalize: Normalization = "dataset",
        loader: Literal["dataloader", "device"] = "dataloader",
        batch_augment: BatchAugment | None = None,
        eval_batch_size: int | None = None,
        drop_last: bool = False,
        channels_last: bool | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        if channels_last is not None:
            rank_zero_deprecation("data.channels_last is deprecated and has no effect: model.channels_last sets the "
                                  "memory format of the model and of every batch; remove data.channels_last")
        if val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {val_size}")
        if not 0.0 < train_fraction <= 1.0:
            raise ConfigError(f"train_fraction must be in (0, 1] (1 trains on every training image), "
                              f"got {train_fraction}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0 (0 loads in the training process), got {num_workers}")
        self.save_hyperparameters(ignore=["channels_last"])  # deprecated; the model's hparam of that name rules
        self.data_dir = Path(data_dir if data_dir is not None else default_data_dir()).expanduser()
        self.train_transform = build_transform(augment, train=True, erasing=erasing, normalization=normalize)
        self.eval_transform = build_transform(augment, train=False, normalization=normalize)
        self.batch_augment = self._batch_augment(augment, erasing, batch_augment) if loader == "device" else NO_AUGMENT
        self.datasets: dict[str, ImageArrayDataset] = {}
        self.on_device: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _batch_augment(augment: str | list[v2.Transform], erasing: Erasing | None,
                       batch_augment: BatchAugment | None) -> BatchAugment:
        """The device loader's augmentation: ``batch_augment``, else its version of the ``augment`` preset."""
        if erasing is not None:
            raise ConfigError(f"erasing {erasing!r} runs in the DataLoader path only; with loader: device use "
                              f"data.batch_augment.cutout (e.g. 16), or use loader: dataloader")
        if batch_augment is not None:
            return batch_augment
        if not isinstance(augment, str) or augment not in BATCH_PRESETS:
            name = repr(augment) if isinstance(augment, str) else "given as a list of transforms"
            raise ConfigError(f"augment {name} has no device-loader version ({sorted(BATCH_PRESETS)}); "
                              f"set data.batch_augment or use loader: dataloader")
        return BATCH_PRESETS[augment]

    def prepare_data(self) -> None:
        # Runs on one process per node: the only place that downloads or writes the cache.
        if self.hparams.predict_path is not None and self.trainer is not None and self.trainer.predicting:
            return  # image files need no CIFAR-10 on disk
        sources.prepare(self.data_dir, self.hparams.download)

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.hparams.predict_path is not None:
            images, self.image_paths = load_images(self.hparams.predict_path)
            self.datasets["predict"] = ImageArrayDataset(images, torch.arange(len(images)), self.eval_transform)
            return
        if self.datasets:
            return
        arrays = sources.load_arrays(sources.prepare(self.data_dir, download=False))
        if arrays.classes != self.classes:
            raise ConfigError(f"{self.data_dir}: classes {arrays.classes} are not CIFAR-10's {self.classes}")
        train_images = torch.from_numpy(arrays.train_images).permute(0, 3, 1, 2).contiguous()
        train_labels = torch.from_numpy(arrays.train_labels)
        val_size = self.hparams.val_size
        if val_size >= len(train_labels):
            raise ConfigError(f"val_size={val_size} must be smaller than the {len(train_labels)} training images")
        order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val_idx, train_idx = order[:val_size], order[val_size:]
        if self.hparams.train_fraction < 1.0:
            train_idx = class_balanced_subset(train_idx, train_labels, self.hparams.train_fraction)
        self.datasets = {
            "train": ImageArrayDataset(train_images[train_idx], train_labels[train_idx], self.train_transform),
            "val": ImageArrayDataset(train_images[val_idx], train_labels[val_idx], self.eval_transform),
            "test": ImageArrayDataset(
                torch.from_numpy(arrays.test_images).permute(0, 3, 1, 2).contiguous(),
                torch.from_numpy(arrays.test_labels),
                self.eval_transform,
            ),
        }

    def _loader(self, split: str, train: bool) -> DataLoader | DeviceLoader:
        batch_size = self.hparams.batch_size if train else self.hparams.eval_batch_size or self.hparams.batch_size
        if self.hparams.loader == "device":
            return self._device_loader(split, train, batch_size)
        workers = self.hparams.num_workers
        options = {"num_workers": workers, "pin_memory": self.hparams.pin_memory,
                   "persistent_workers": workers > 0 and self.hparams.persistent_workers}
        if train:
            rank, world_size = self._shard()
            sampler = SeededSampler(len(self.datasets[split]), num_replicas=world_size, rank=rank, shuffle=True,
                                    seed=run_seed())
            return ResumableDataLoader(self.datasets[split], sampler, batch_size, drop_last=self.hparams.drop_last,
                                       **options)
        # Its own generator: creating its iterator then draws nothing from the global one that training uses.
        return DataLoader(self.datasets[split], batch_size=batch_size, generator=torch.Generator(), **options)

    def _device_loader(self, split: str, train: bool, batch_size: int) -> DeviceLoader:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        key = (split, str(device))
        if key not in self.on_device:  # copied to the device once per run
            dataset = self.datasets[split]
            self.on_device[key] = (dataset.images.to(device), dataset.labels.to(device))
        images, labels = self.on_device[key]
        return DeviceLoader(
            images,
            labels,
            batch_size,
            augment=self.batch_augment if train else NO_AUGMENT,
            shuffle=train,
            drop_last=train and self.hparams.drop_last,
            seed=run_seed(),
            rank=self._shard()[0],
            world_size=self._shard()[1],
            dtype=DTYPES[self.hparams.dtype],
            normalization=self.hparams.normalize,
        )

    def _shard(self) -> tuple[int, int]:
        """(rank, process count) of this process's share of the training images."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("predict" if "predict" in self.datasets else "test", train=False)

    def predict_names(self) -> list[str]:
        """What each predicted item is: its image file, or ``test[i]`` for the test split."""
        if "predict" in self.datasets:
            return self.image_paths
        return [f"test[{index}]" for index in range(len(self.datasets["test"]))]
