"""The user's own PNG/JPEG files as a prediction set, shaped like CIFAR-10 images.

Each file is decoded with Pillow (torchvision's image loader) and converted to RGB (alpha dropped,
grey and palette images expanded); then transforms.v2 resizes its shorter side to 32 (or the size asked)
and crops the centre, so objects keep their aspect ratio. Files are decoded once, when the set is built:
a file that cannot be decoded is named in a warning and left out.
"""

import functools
import glob
from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torchvision.transforms import v2

from cifar_lab.errors import DataFormatError, DataNotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR_SIZE = 32

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


@functools.cache
def square_image(size: int) -> v2.Compose:
    """Shorter side resized to ``size``, centre cropped to ``size`` x ``size``: objects keep their aspect ratio."""
    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def load_image(path: Path, size: int = CIFAR_SIZE) -> torch.Tensor:
    """One image file as uint8 ``[3, size, size]`` RGB, the form of a CIFAR-10 image at ``size`` 32."""
    with Image.open(path) as image:
        return square_image(size)(image.convert("RGB"))


def decode_readable(paths: Iterable[Path], size: int = CIFAR_SIZE) -> tuple[list[torch.Tensor], list[Path]]:
    """The images of ``paths`` that decode, and their paths; each one that does not is named in a warning."""
    images, readable = [], []
    for path in paths:
        try:
            images.append(load_image(path, size))
        except UNREADABLE as err:
            rank_zero_warn(f"skipping {path}: not a readable image ({err})")
            continue
        readable.append(path)
    return images, readable


def load_images(pattern: str, size: int = CIFAR_SIZE) -> tuple[torch.Tensor, list[str]]:
    """The readable images named by ``pattern`` as uint8 ``[N, 3, size, size]`` and their paths."""
    images, readable = decode_readable(find_images(pattern), size)
    if not images:
        raise DataFormatError(f"none of the images at {pattern!r} could be read")
    return torch.stack(images), [str(path) for path in readable]
