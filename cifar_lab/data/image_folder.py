"""Your own photos as a dataset: a folder per class, torchvision's ``ImageFolder`` layout.

Either ``<root>/<class>/*`` (split into train/val/test by the DataModule, per class and seeded) or
``<root>/train/<class>/*`` with optional ``val/`` and ``test/`` beside it, holding the same class folders.
Class names are the folder names, sorted (as ``ImageFolder`` numbers them). Every file is decoded once, at
the size asked, as ``cifar_lab.data.image_files`` decodes a prediction: a file that is not a readable image
is named in a warning and skipped. Hidden files (``.DS_Store``...) are not images and are passed over silently.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets.folder import find_classes, make_dataset

from cifar_lab.data.augment import ChannelStats
from cifar_lab.data.image_files import decode_readable
from cifar_lab.errors import DataFormatError, DataNotFoundError

SPLIT_FOLDERS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledImages:
    """uint8 ``[N,3,S,S]`` images and their int64 class indices."""

    images: torch.Tensor
    labels: torch.Tensor


def _is_image_candidate(path: str) -> bool:
    return not Path(path).name.startswith(".")


def read_class_folders(folder: Path, size: int) -> tuple[list[str], LabelledImages]:
    """The class names (sub-folder names, sorted) and decoded images of one folder of class folders."""
    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError as err:
        raise DataNotFoundError(f"{folder} holds no class folders: put each class's images in a folder of its own "
                                f"(e.g. {folder}/cat/1.jpg, {folder}/dog/1.jpg)") from err
    files = make_dataset(str(folder), class_to_idx, is_valid_file=_is_image_candidate, allow_empty=True)
    images, readable = decode_readable((Path(path) for path, _ in files), size)
    label_of = {path: label for path, label in files}
    labels = torch.tensor([label_of[str(path)] for path in readable], dtype=torch.int64)
    empty = [name for index, name in enumerate(classes) if not (labels == index).any()]
    if empty:
        raise DataFormatError(f"class folder(s) {', '.join(str(folder / name) for name in empty)} hold no readable "
                              f"image: add images (PNG/JPEG) or remove the folder")
    return classes, LabelledImages(torch.stack(images), labels)


def has_split_folders(root: Path) -> bool:
    """Whether ``root`` holds ``train/`` (and maybe ``val/``, ``test/``) rather than the class folders themselves."""
    return (root / "train").is_dir()


def class_names(root: Path) -> list[str]:
    """The class names of an image folder (its training classes), without decoding any image."""
    return find_classes(str(root / "train" if has_split_folders(root) else root))[0]


def read_image_folder(root: Path, size: int) -> tuple[list[str], dict[str, LabelledImages]]:
    """Class names and the images of each split found under ``root`` (all of them under ``"all"`` when ``root``
    has no ``train/`` folder), every image ``size`` x ``size``."""
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist; point data.data_dir at a folder with a "
                                f"sub-folder per class (or train/ and test/ folders of them)")
    if not has_split_folders(root):
        classes, images = read_class_folders(root, size)
        splits = {"all": images}
    else:
        found = {split: read_class_folders(root / split, size) for split in SPLIT_FOLDERS if (root / split).is_dir()}
        classes = found["train"][0]
        for split, (split_classes, _) in found.items():
            if split_classes != classes:
                raise DataFormatError(
                    f"{root / split} has other classes than {root / 'train'}: only in train "
                    f"{sorted(set(classes) - set(split_classes))}, only in {split} "
                    f"{sorted(set(split_classes) - set(classes))}; give every split the same class folders"
                )
        splits = {split: images for split, (_, images) in found.items()}
    if len(classes) < 2:
        raise DataFormatError(f"{root} has {len(classes)} class folder(s) ({', '.join(classes)}); a classifier needs "
                              f"at least 2: add a folder of images per class")
    return classes, splits


def channel_stats(images: torch.Tensor) -> ChannelStats:
    """Per-channel mean and std of uint8 ``[N,3,H,W]`` images with pixels scaled to [0, 1]."""
    pixels = images.to(torch.float64).div(255).transpose(0, 1).flatten(1)
    return tuple(pixels.mean(dim=1).tolist()), tuple(pixels.std(dim=1).tolist())
