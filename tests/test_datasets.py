"""CIFAR-100 and folders of your own images through the one DataModule, the CLI, the checkpoint and ``predict``."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lab.cli import main
from cifar_lab.data import ImageDataModule
from cifar_lab.data.datamodule import configured_class_count
from cifar_lab.data.sources import CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES, RELEASES
from cifar_lab.errors import ConfigError, DataFormatError, DataNotFoundError
from tests.helpers import CONFIGS, NO_FIGURES, TINY_DATA

PHOTO_CLASSES = ["cat", "dog", "fox"]
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


def write_photos(root: Path, per_class: int = 10, classes: list[str] = PHOTO_CLASSES) -> Path:
    """``root/<class>/<i>.jpg|png``: photos of other sizes than 32x32, a class colour plus noise."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.clip(np.array(COLOURS.get(name, (128, 128, 128))) + rng.normal(0, 30, (40, 56, 3)), 0, 255)
            suffix = "png" if index % 2 else "jpg"
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index}.{suffix}")
    return root


def dm(**kwargs) -> ImageDataModule:
    data = ImageDataModule(**{"download": False, "num_workers": 0, "val_size": 50, **kwargs})
    data.prepare_data()
    data.setup("fit")
    return data


@pytest.mark.parametrize(("labels", "classes"), [("fine", CIFAR100_CLASSES), ("coarse", CIFAR100_COARSE_CLASSES)])
def test_cifar100_has_its_classes_statistics_and_label_sets(npz_dir: Path, labels: str, classes: list[str]) -> None:
    data = dm(dataset="cifar100", labels=labels, data_dir=str(npz_dir))
    assert data.classes == classes and data.num_classes == len(classes)
    assert data.input_stats == [[0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]]
    arrays = np.load(npz_dir / "cifar100.npz")
    expected = arrays["test_labels"] if labels == "fine" else arrays["test_coarse_labels"]
    assert torch.equal(data.datasets["test"].labels, torch.from_numpy(expected))
    assert (len(data.datasets["train"]), len(data.datasets["val"])) == (250, 50)
    torch.testing.assert_close(data.datasets["test"][0][0][:, 0, 0],
                               (torch.from_numpy(arrays["test_images"][0, 0, 0]).float() / 255 - torch.tensor(
                                   [0.5071, 0.4865, 0.4409])) / torch.tensor([0.2673, 0.2564, 0.2762]))


@pytest.mark.parametrize(("options", "message"), [
    ({"labels": "coarse"}, "CIFAR-10 has fine labels only, not 'coarse'"),
    ({"test_size": 0.1}, "CIFAR-10 has its own test split: leave data.test_size null"),
    ({"val_size": 1.5}, r"val_size must be a count >= 0 or a share in \(0, 1\) \(or null\), got 1.5"),
    ({"dataset": "folder"}, "dataset folder needs data.data_dir"),
])
def test_dataset_options_out_of_range_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageDataModule(**options)


def test_cifar100_trains_a_100_class_resnet_whose_checkpoint_and_predictions_name_its_classes(
        npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR_LAB_DATA", str(npz_dir))
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    main(["fit", "--config", str(CONFIGS / "resnet18.yaml"), "--config", str(CONFIGS / "trainer/cpu.yaml"),
          "--config", str(CONFIGS / "trainer/smoke.yaml"), *TINY_DATA, *NO_FIGURES, "--trainer.limit_train_batches",
          "2", "--data.dataset", "cifar100"])
    run = tmp_path / "runs" / "resnet18" / "version_0"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["num_classes"] == 100 and hparams["class_names"] == CIFAR100_CLASSES
    assert hparams["input_stats"] == [list(values) for values in RELEASES["cifar100"].stats]
    assert checkpoint["state_dict"]["backbone.fc.weight"].shape[0] == 100
    # Only the checkpoint: its dataset, classes and statistics come with it.
    main(["predict", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--data.num_workers", "0",
          "--trainer.limit_predict_batches", "1", "--predictions.output_path", str(tmp_path / "predictions.csv")])
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert rows and all(row["class"] in CIFAR100_CLASSES for row in rows)
    assert configured_class_count({"dataset": "cifar100", "labels": "coarse"}) == 20


def test_a_photo_folder_is_split_per_class_normalised_by_its_training_images_and_unreadable_files_skipped(
        tmp_path: Path) -> None:
    photos = write_photos(tmp_path / "photos")
    (photos / "cat" / "notes.txt").write_text("not an image")
    (photos / "dog" / ".DS_Store").write_bytes(b"\0\1")
    with pytest.warns(UserWarning, match=r"skipping .*cat/notes.txt: not a readable image"):
        data = dm(dataset="folder", data_dir=str(photos), val_size=0.2, test_size=0.2, image_size=24)
    assert data.classes == PHOTO_CLASSES and data.num_classes == 3
    sizes = {split: torch.bincount(data.datasets[split].labels, minlength=3).tolist() for split in ("train", "val", "test")}
    assert sizes == {"train": [6, 6, 6], "val": [2, 2, 2], "test": [2, 2, 2]}  # round(0.2 * 10) per class
    train = data.datasets["train"].images
    assert train.shape == (18, 3, 24, 24) and train.dtype == torch.uint8
    pixels = train.double().div(255).permute(1, 0, 2, 3).reshape(3, -1).numpy()
    np.testing.assert_allclose(data.input_stats, [pixels.mean(axis=1), pixels.std(axis=1, ddof=1)], rtol=1e-9)
    assert data.datasets["train"][0][0].shape == (3, 24, 24)
    again = dm(dataset="folder", data_dir=str(photos), val_size=0.2, test_size=0.2, image_size=24)
    assert torch.equal(again.datasets["test"].images, data.datasets["test"].images)  # fixed by split_seed
    assert configured_class_count({"dataset": "folder", "data_dir": str(photos)}) == 3


def test_train_val_test_folders_are_used_as_they_are(tmp_path: Path) -> None:
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        write_photos(tmp_path / "photos" / split, per_class=count)
    data = dm(dataset="folder", data_dir=str(tmp_path / "photos"), val_size=None)
    assert [len(data.datasets[split]) for split in ("train", "val", "test")] == [18, 6, 9]
    assert data.datasets["test"].images.shape[-2:] == (32, 32)


def write_bad_folder(root: Path, problem: str) -> Path:
    if problem == "empty_class":
        write_photos(root, classes=["cat", "dog"])
        (root / "owl").mkdir()
        (root / "owl" / "broken.jpg").write_bytes(b"not a jpeg")
    elif problem == "one_class":
        write_photos(root, classes=["cat"])
    elif problem == "other_classes":
        write_photos(root / "train", classes=["cat", "dog"])
        write_photos(root / "test", classes=["cat", "fox"])
    elif problem == "val_size_and_val":
        write_photos(root / "train")
        write_photos(root / "val")
    return root


@pytest.mark.parametrize(("problem", "error", "message"), [
    ("empty_class", DataFormatError, r"class folder\(s\) .*owl hold no readable image: add images"),
    ("one_class", DataFormatError, r"has 1 class folder\(s\) \(cat\); a classifier needs at least 2"),
    ("other_classes", DataFormatError, r"test has other classes than .*train: only in train \['dog'\], only in test "
                                       r"\['fox'\]; give every split the same class folders"),
    ("val_size_and_val", ConfigError, r"data.val_size is set, but .*val holds the val images"),
    ("missing", DataNotFoundError, r"image folder .*photos does not exist"),
])
def test_a_bad_photo_folder_is_a_one_line_error(tmp_path: Path, problem: str, error: type, message: str) -> None:
    root = write_bad_folder(tmp_path / "photos", problem)
    with pytest.warns(UserWarning) if problem == "empty_class" else pytest.MonkeyPatch.context(), \
            pytest.raises(error, match=message):
        ImageDataModule(dataset="folder", data_dir=str(root), val_size=0.2)


def test_the_finetune_recipe_trains_on_a_photo_folder_and_predicts_its_photos_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = write_photos(tmp_path / "photos", per_class=8)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar-lab"])
    main(["fit", "--config", str(CONFIGS / "finetune_resnet18.yaml"), "--config", str(CONFIGS / "trainer/cpu.yaml"),
          "--config", str(CONFIGS / "trainer/smoke.yaml"), *NO_FIGURES, "--data.num_workers", "0",
          "--data.dataset", "folder", "--data.data_dir", str(photos), "--data.batch_size", "8",
          "--model.backbone_kwargs", '{"input_size": 40}'])
    run = tmp_path / "runs" / "torchvision-resnet18" / "version_0"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["class_names"] == PHOTO_CLASSES and hparams["num_classes"] == 3
    assert checkpoint["datamodule_hyper_parameters"]["image_size"] == 40  # the backbone's input_size
    main(["predict", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--data.num_workers", "0",
          "--data.predict_path", str(photos / "fox"), "--predictions.output_path", str(tmp_path / "fox.csv")])
    rows = list(csv.DictReader((tmp_path / "fox.csv").open()))
    assert len(rows) == 8 and {row["class"] for row in rows} <= set(PHOTO_CLASSES)
    assert all(row["top3"].split()[0].split(":")[0] == row["class"] for row in rows)
