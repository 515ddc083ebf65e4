from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from cifar_lab.data import ImageDataModule
from cifar_lab.data.datamodule import class_balanced_subset
from cifar_lab.data.device_loader import BatchAugment
from cifar_lab.data.sources import RELEASES
from cifar_lab.errors import ConfigError


def make_dm(data_dir: Path, **kwargs) -> ImageDataModule:
    options = {"data_dir": str(data_dir), "download": False, "val_size": 50, "batch_size": 32, "num_workers": 0}
    dm = ImageDataModule(**{**options, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


MEAN, STD = (torch.tensor(values).view(3, 1, 1) for values in RELEASES["cifar10"].stats)


def normalised(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - MEAN) / STD


def image_keys(dataset) -> set[bytes]:
    return {bytes(img.numpy()) for img in dataset.images}


def test_splits_have_the_right_sizes_and_are_disjoint(npz_dir: Path) -> None:
    dm = make_dm(npz_dir)
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (250, 50, 60)
    train, val, test = (image_keys(dm.datasets[s]) for s in ("train", "val", "test"))
    assert len(train | val) == 300 and not train & val
    assert not (train | val) & test


def test_split_is_fixed_by_split_seed_not_by_the_run_seed(npz_dir: Path) -> None:
    torch.manual_seed(0)
    first = make_dm(npz_dir).datasets["val"].images
    torch.manual_seed(1)
    assert torch.equal(first, make_dm(npz_dir).datasets["val"].images)
    assert not torch.equal(first, make_dm(npz_dir, split_seed=1).datasets["val"].images)


def test_class_balanced_subset_keeps_the_first_share_of_each_class_in_order() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])  # by image index
    indices = torch.tensor([5, 3, 0, 6, 1, 4, 7, 2])  # classes 1, 1, 0, 1, 0, 1, 1, 0
    # class 0 (0, 1, 2): round(0.5 * 3) = 2 -> images 0, 1; class 1 (5, 3, 6, 4, 7): round(2.5) = 2 -> 5, 3
    assert class_balanced_subset(indices, labels, 0.5).tolist() == [5, 3, 0, 1]
    assert class_balanced_subset(indices, labels, 0.01).tolist() == [5, 0]  # at least one image per class


def test_train_fraction_is_a_fixed_class_balanced_subset_disjoint_from_validation(npz_dir: Path) -> None:
    full, half = make_dm(npz_dir), make_dm(npz_dir, train_fraction=0.5)
    full_labels, half_labels = full.datasets["train"].labels, half.datasets["train"].labels
    for label in full_labels.unique():
        assert (half_labels == label).sum() == max(1, round(0.5 * int((full_labels == label).sum())))
    assert image_keys(half.datasets["train"]) <= image_keys(full.datasets["train"])
    assert torch.equal(half.datasets["val"].images, full.datasets["val"].images)
    assert torch.equal(half.datasets["train"].images, make_dm(npz_dir, train_fraction=0.5).datasets["train"].images)
    other_split = make_dm(npz_dir, train_fraction=0.5, split_seed=1).datasets["train"].images
    assert not torch.equal(half.datasets["train"].images, other_split)


def test_val_and_test_are_normalised_and_never_augmented(npz_dir: Path) -> None:
    dm = make_dm(npz_dir, augment="standard")
    for split in ("val", "test"):
        dataset = dm.datasets[split]
        expected = normalised(dataset.images[0])
        for _ in range(3):
            image, _ = dataset[0]
            torch.testing.assert_close(image, expected)


def test_standard_augmentation_changes_training_images(npz_dir: Path) -> None:
    dm = make_dm(npz_dir, augment="standard")
    torch.manual_seed(0)
    views = torch.stack([dm.datasets["train"][0][0] for _ in range(8)])
    assert views.shape == (8, 3, 32, 32) and views.dtype == torch.float32
    assert not all(torch.equal(views[0], v) for v in views[1:])
    plain = make_dm(npz_dir, augment="none").datasets["train"]
    assert torch.equal(plain[0][0], plain[0][0])


def test_loaders_give_normalised_batches_with_workers(npz_dir: Path) -> None:
    dm = make_dm(npz_dir, num_workers=2, augment="none")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (32,) and labels.dtype == torch.int64
    train = dm.datasets["train"]
    distances = torch.cdist(images.flatten(1), normalised(train.images).flatten(1),  # shuffled: find each image
                            compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.argmin(dim=1)
    assert distances.min(dim=1).values.max() < 1e-3 and len(set(nearest.tolist())) == 32
    assert torch.equal(labels, train.labels[nearest])
    test_images, test_labels = map(torch.cat, zip(*dm.test_dataloader()))
    torch.testing.assert_close(test_images, normalised(dm.datasets["test"].images))
    assert torch.equal(test_labels, dm.datasets["test"].labels)


def test_data_dir_defaults_to_the_environment_variable(npz_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR_LAB_DATA", str(npz_dir))
    assert ImageDataModule().data_dir == npz_dir
    monkeypatch.delenv("CIFAR_LAB_DATA")
    assert ImageDataModule().data_dir == Path("data")


def test_bad_options_are_config_errors(npz_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown augment preset 'fancy'.*standard"):
        ImageDataModule(augment="fancy")
    with pytest.raises(ConfigError, match="val_size=300 must be smaller than the 300 training images"):
        make_dm(npz_dir, val_size=300)


def test_augmentation_the_device_loader_cannot_do_is_a_config_error_naming_the_way_out() -> None:
    with pytest.raises(ConfigError, match="augment 'autoaugment' has no device-loader version.*set data.batch_augment"):
        ImageDataModule(augment="autoaugment", loader="device")
    with pytest.raises(ConfigError, match="augment given as a list of transforms has no device-loader version"):
        ImageDataModule(augment=[v2.RandomHorizontalFlip()], loader="device")
    with pytest.raises(ConfigError, match="erasing 'cutout' runs in the DataLoader path only.*batch_augment.cutout"):
        ImageDataModule(erasing="cutout", loader="device", batch_augment=BatchAugment(cutout=16))
    assert ImageDataModule(augment="autoaugment", loader="device", batch_augment=BatchAugment(cutout=8)
                             ).batch_augment.cutout == 8
