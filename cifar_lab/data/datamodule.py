"""CIFAR-10, CIFAR-100 or a folder of your own images as one LightningDataModule: a fixed train/val split,
augmentation on the training split only, and the class names and normalisation for the model to link to."""

import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_deprecation
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cifar_lab.data import sources
from cifar_lab.data.augment import (
    Erasing,
    Normalization,
    build_transform,
    normalization_stats,
)
from cifar_lab.data.device_loader import NO_AUGMENT, BatchAugment, DeviceLoader
from cifar_lab.data.image_files import CIFAR_SIZE, load_images
from cifar_lab.data.image_folder import (
    LabelledImages,
    channel_stats,
    class_names,
    read_image_folder,
)
from cifar_lab.data.resumable import (
    ResumableDataLoader,
    SampleKey,
    SeededSampler,
    run_seed,
    sample_seed,
    seeded_rng,
)
from cifar_lab.errors import ConfigError

DATA_DIR_ENV = "CIFAR_LAB_DATA"
CIFAR_VAL_SIZE = 5000  # training images held out for validation when data.val_size is null
FOLDER_SHARE = 0.1  # the share of a folder's images held out for each of val and test when no folder holds them
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


def held_out_share(size: int | float, total: int) -> float:
    """A ``val_size``/``test_size`` as a share of ``total`` images: a float is one already, an int a count."""
    return size if isinstance(size, float) else size / total


def stratified_split(labels: torch.Tensor, shares: dict[str, float], seed: int) -> dict[str, torch.Tensor]:
    """Indices of ``labels`` split per class into the held-out sets of ``shares`` and ``train`` (the rest, at least
    one image of each class), in a random order fixed by ``seed``: each set keeps the classes' proportions."""
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in [*shares, "train"]}
    for label in labels.unique():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for name, share in shares.items():
            count = min(round(share * len(members)), len(members) - start - 1)
            parts[name].append(members[start:start + count])
            start += count
        parts["train"].append(members[start:])
    return {name: torch.cat(members).sort().values for name, members in parts.items()}


def configured_class_count(data: dict[str, Any]) -> int | None:
    """Classes of the dataset a saved ``data:`` config names, without reading its images; None for an image folder
    that is not there (any more)."""
    dataset, labels = data.get("dataset") or "cifar10", data.get("labels") or "fine"
    if dataset in sources.RELEASES:
        return len(sources.RELEASES[dataset].classes.get(labels, ()))
    try:
        return len(class_names(Path(data.get("data_dir") or ".").expanduser()))
    except FileNotFoundError:
        return None


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV, "./data")


class ImageDataModule(L.LightningDataModule):
    """Train/val/test loaders of CIFAR-10, CIFAR-100 or a folder of your own images.

    Args:
        data_dir: for CIFAR, the folder holding ``cifar10.npz`` or ``cifar-10-batches-py/`` (``cifar100.npz`` or
            ``cifar-100-python/``); null means ``$CIFAR_LAB_DATA`` or ``./data``, so one config runs on machines with
            different layouts. For ``folder``, the image folder itself (required).
        dataset: ``cifar10``, ``cifar100`` or ``folder``: ``data_dir`` holds a sub-folder of images per class
            (``photos/cat/*.jpg``...; torchvision's ``ImageFolder`` layout), or ``train/``, ``val/`` and ``test/``
            folders of them (``val/`` and ``test/`` optional: a missing one is held out of the training images).
            Class names are the folder names.
        labels: CIFAR-100's ``fine`` (100 classes) or ``coarse`` (20 superclasses) labels; the other datasets have
            ``fine`` only.
        download: fetch a CIFAR dataset with torchvision if it is not on disk.
        batch_size: images per batch on each device.
        num_workers: DataLoader worker processes. A training image's augmentation depends on the run's seed, the
            epoch and the image alone, so any number of workers (persistent or not) gives the same batches.
        persistent_workers: keep the workers alive between epochs (with ``num_workers > 0``): no start-up cost
            per epoch, at the price of their memory between epochs.
        pin_memory: page-locked host memory for faster copies to a GPU.
        val_size: training images held out for validation (the test split is never used for it): a count, or a
            share of the training images as a float in (0, 1); 0 validates nothing. Null means 5,000 for CIFAR and
            10% of each class for a folder without ``val/``.
        test_size: images of each class held out for testing from a folder without ``test/`` (a count or a
            share as for ``val_size``; null: 10%). CIFAR has its own test split.
        split_seed: seed of the train/val(/test) split, independent of the run's seed.
        train_fraction: share of the training images to train on, in (0, 1]: a fixed subset (by ``split_seed``)
            that keeps each class's share, drawn after the validation images are held out, so learning from
            little data (where augmentation and pretraining matter) is measured on the same validation set.
        augment: training augmentation: a preset name (``none``, ``standard``, ``color``, ``autoaugment``,
            ``randaugment``, ``trivialaugment``; see ``cifar_lab.data.augment.PRESETS``) or a list of
            ``torchvision.transforms.v2`` transforms of uint8 images (``class_path``/``init_args`` in YAML).
        erasing: ``cutout`` (a 16x16 square of the mean colour) or ``random_erasing`` on the normalised
            training images, after ``augment``; DataLoader path only (the device loader has ``batch_augment.cutout``).
        normalize: how pixels are scaled for the model, in every split and loader: ``dataset`` (the training
            set's per-channel mean and std: CIFAR-10's, CIFAR-100's, or computed from a folder's training images),
            ``half`` (mean 0.5, std 0.5: pixels in [-1, 1], as many tutorials do) or ``none`` (pixels in [0, 1]).
            The mean and std are saved in the model's checkpoint, so test, predict, export and the figures undo or
            repeat the same scaling.
        loader: ``dataloader`` (torchvision transforms per image in worker processes) or ``device``
            (each split held on the training device, augmented a batch at a time: much faster).
        batch_augment: the device loader's augmentation; null means the ``augment`` preset's.
        eval_batch_size: batch size for val/test/predict; null means ``batch_size``.
        drop_last: drop the last incomplete training batch.
        dtype: dtype of the device loader's image batches.
        channels_last: deprecated; ``model.channels_last`` sets the memory format of the model and its batches.
        predict_path: PNG/JPEG file, folder or glob for ``predict``; null predicts the test split.
        image_size: side of a folder's images, each resized (shorter side) and centre cropped to it. In the CLI it
            follows ``model.backbone_kwargs.input_size`` (32 without one), the fine-tuning size; CIFAR images stay
            32x32 (a backbone with ``input_size`` upsamples them itself).

    After construction, ``classes``, ``num_classes`` and ``input_stats`` (the per-channel mean and std every split is
    normalised with) are known, for the model to link to and keep in its checkpoint.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        dataset: Literal["cifar10", "cifar100", "folder"] = "cifar10",
        labels: Literal["fine", "coarse"] = "fine",
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 4,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        val_size: int | float | None = None,
        test_size: int | float | None = None,
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
        image_size: int = CIFAR_SIZE,
    ) -> None:
        super().__init__()
        if channels_last is not None:
            rank_zero_deprecation("data.channels_last is deprecated and has no effect: model.channels_last sets the "
                                  "memory format of the model and of every batch; remove data.channels_last")
        for name, size in (("val_size", val_size), ("test_size", test_size)):
            if isinstance(size, float) and not 0.0 < size < 1.0 or isinstance(size, int) and size < 0:
                raise ConfigError(f"{name} must be a count >= 0 or a share in (0, 1) (or null), got {size}")
        if image_size < 8:
            raise ConfigError(f"image_size must be >= 8 pixels, got {image_size}")
        if not 0.0 < train_fraction <= 1.0:
            raise ConfigError(f"train_fraction must be in (0, 1] (1 trains on every training image), "
                              f"got {train_fraction}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0 (0 loads in the training process), got {num_workers}")
        self.save_hyperparameters(ignore=["channels_last"])  # deprecated; the model's hparam of that name rules
        self.folder_splits: dict[str, LabelledImages] = {}
        if dataset == "folder":
            self._init_folder(data_dir, labels, val_size, test_size, image_size, split_seed)
        else:
            self._init_cifar(dataset, labels, data_dir, test_size)
        self.num_classes = len(self.classes)
        # Lists, not tuples: the model keeps them as a hyperparameter, which Lightning also writes as plain YAML.
        self.input_stats = [list(values) for values in normalization_stats(normalize, self.dataset_stats)]
        self.image_size = image_size if dataset == "folder" else CIFAR_SIZE
        self.train_transform = build_transform(augment, train=True, stats=self.input_stats, erasing=erasing,
                                               size=self.image_size)
        self.eval_transform = build_transform(augment, train=False, stats=self.input_stats)
        self.batch_augment = self._batch_augment(augment, erasing, batch_augment) if loader == "device" else NO_AUGMENT
        self.datasets: dict[str, ImageArrayDataset] = {}
        self.on_device: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def for_evaluation(cls, saved: dict[str, Any], data_dir: str | None = None) -> "ImageDataModule":
        """The DataModule of a checkpoint's saved arguments, set up in this process (no download, no workers, the
        per-image loader), so its test split is the one the run was tested on; ``data_dir``: where the data is now."""
        ignored = {"channels_last", "predict_path", "batch_augment", "loader", "num_workers", "download"}
        arguments = {key: value for key, value in saved.items() if key not in ignored and not key.startswith("_")}
        if data_dir is not None:
            arguments["data_dir"] = data_dir
        data = cls(**arguments, download=False, num_workers=0)
        data.setup("test")
        return data

    def _init_cifar(self, dataset: str, labels: str, data_dir: str | None, test_size: int | float | None) -> None:
        if dataset not in sources.RELEASES:
            raise ConfigError(f"unknown dataset {dataset!r}; choose one of {sorted([*sources.RELEASES, 'folder'])}")
        self.release = sources.RELEASES[dataset]
        if labels not in self.release.classes:
            raise ConfigError(f"{self.release.title} has {' and '.join(sorted(self.release.classes))} labels only, "
                              f"not {labels!r}; coarse labels are CIFAR-100's")
        if test_size is not None:
            raise ConfigError(f"test_size applies to an image folder without test/; {self.release.title} has its "
                              f"own test split: leave data.test_size null")
        self.data_dir = Path(data_dir if data_dir is not None else default_data_dir()).expanduser()
        self.classes = list(self.release.classes[labels])
        self.dataset_stats = self.release.stats

    def _init_folder(self, data_dir: str | None, labels: str, val_size: int | float | None,
                     test_size: int | float | None, image_size: int, split_seed: int) -> None:
        """Decode the folder now: its class names and training statistics are needed before ``setup``, for the
        model to link to."""
        if data_dir is None:
            raise ConfigError("dataset folder needs data.data_dir: the folder with a sub-folder of images per class "
                              "(e.g. photos/cat/1.jpg)")
        if labels != "fine":
            raise ConfigError(f"an image folder has one label set (its class folders): leave data.labels fine, "
                              f"not {labels!r}")
        self.release = None
        self.data_dir = Path(data_dir).expanduser()
        self.classes, found = read_image_folder(self.data_dir, image_size)
        pool = found.pop("train", None) or found.pop("all")
        shares = {}
        for split, size in (("val", val_size), ("test", test_size)):
            if split in found and size is not None:
                raise ConfigError(f"data.{split}_size is set, but {self.data_dir / split} holds the {split} images; "
                                  f"leave data.{split}_size null")
            if split not in found:
                shares[split] = FOLDER_SHARE if size is None else held_out_share(size, len(pool.labels))
        parts = stratified_split(pool.labels, shares, split_seed)
        self.folder_splits = {**found, **{name: LabelledImages(pool.images[indices], pool.labels[indices])
                                          for name, indices in parts.items()}}
        self.dataset_stats = channel_stats(self.folder_splits["train"].images)

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
        if self.release is None or (self.hparams.predict_path is not None and self.trainer is not None
                                    and self.trainer.predicting):
            return  # an image folder is read already; image files to predict need no CIFAR on disk
        sources.prepare(self.data_dir, self.hparams.download, self.release)

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.hparams.predict_path is not None:
            images, self.image_paths = load_images(self.hparams.predict_path, self.image_size)
            self.datasets["predict"] = ImageArrayDataset(images, torch.arange(len(images)), self.eval_transform)
            return
        if self.datasets:
            return
        splits = dict(self.folder_splits) if self.release is None else self._cifar_splits()
        if self.hparams.train_fraction < 1.0:
            train = splits["train"]
            kept = class_balanced_subset(torch.arange(len(train.labels)), train.labels, self.hparams.train_fraction)
            splits["train"] = LabelledImages(train.images[kept], train.labels[kept])
        transforms = {"train": self.train_transform, "val": self.eval_transform, "test": self.eval_transform}
        self.datasets = {name: ImageArrayDataset(split.images, split.labels, transforms[name])
                         for name, split in splits.items()}

    def _cifar_splits(self) -> dict[str, LabelledImages]:
        arrays = sources.load_arrays(sources.prepare(self.data_dir, False, self.release), self.hparams.labels)
        if arrays.classes != self.classes:
            raise ConfigError(f"{self.data_dir}: classes {arrays.classes} are not {self.release.title}'s "
                              f"{self.classes}")
        train_images = torch.from_numpy(arrays.train_images).permute(0, 3, 1, 2).contiguous()
        train_labels = torch.from_numpy(arrays.train_labels)
        val_size = CIFAR_VAL_SIZE if self.hparams.val_size is None else self.hparams.val_size
        val_size = round(val_size * len(train_labels)) if isinstance(val_size, float) else val_size
        if val_size >= len(train_labels):
            raise ConfigError(f"val_size={val_size} must be smaller than the {len(train_labels)} training images")
        order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val_idx, train_idx = order[:val_size], order[val_size:]
        test_images = torch.from_numpy(arrays.test_images).permute(0, 3, 1, 2).contiguous()
        return {
            "train": LabelledImages(train_images[train_idx], train_labels[train_idx]),
            "val": LabelledImages(train_images[val_idx], train_labels[val_idx]),
            "test": LabelledImages(test_images, torch.from_numpy(arrays.test_labels)),
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
            stats=self.input_stats,
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
