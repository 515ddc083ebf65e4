"""The user's own PNG/JPEG files as a prediction set, shaped like CIFAR-10 images.

Each file is decoded with Pillow (torchvision's image loader) and converted to RGB (alpha dropped,
grey and palette images expanded); then transforms.v2 resizes its shorter side to 32 and crops the
centre, so objects keep their aspect ratio. Files are decoded once, when the set is built: a file
that cannot be decoded is named in a warning and left out.
"""

import glob
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torchvision.transforms import v2

from cifar_lab.errors import DataFormatError, DataNotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR_SIZE = 32

to_cifar_image = v2.Compose([v2.ToImage(), v2.Resize(CIFAR_SIZE, antialias=True), v2.CenterCrop(CIFAR_SIZE)])
# What Pillow raises for a file that is not, or no longer, a whole image.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def find_images(pattern: str) -> list[Path]:
    """The PNG/JPEG files named by a file, a folder (searched recursively) or a glob, sorted."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        candidates = path.rglob("*")
    elif path.is_file():
        candidates = [path]
    else:
        candidates = map(Path, glob.glob(str(path), recursive=True))
    found = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise DataNotFoundError(
            f"no PNG/JPEG images at {pattern!r}; give an image file, a folder of images or a glob "
            f"such as 'photos/*.jpg'"
        )
    return found


def load_image(path: Path) -> torch.Tensor:
    """One image file as uint8 ``[3, 32, 32]`` RGB, the form of a CIFAR-10 image."""
    with Image.open(path) as image:
        return to_cifar_image(image.convert("RGB"))


def load_images(pattern: str) -> tuple[torch.Tensor, list[str]]:
    """The readable images named by ``pattern`` as uint8 ``[N, 3, 32, 32]`` and their paths."""
    images, names = [], []
    for path in find_images(pattern):
        try:
            images.append(load_image(path))
        except UNREADABLE as err:
            rank_zero_warn(f"skipping {path}: not a readable PNG/JPEG image ({err})")
            continue
        names.append(str(path))
    if not images:
        raise DataFormatError(f"none of the images at {pattern!r} could be read")
    return torch.stack(images), names
