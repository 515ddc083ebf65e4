"""A whole split as one uint8 tensor on the training device, augmented a batch at a time.

A per-image DataLoader spends its time in Python and PIL-sized tensor ops; CIFAR-10 is only
150 MB as uint8, so it fits on any GPU (or stays in CPU memory) and a batch is a handful of
whole-batch tensor ops: gather, pad + crop with per-image offsets, flip, normalise, cutout.
Normalisation uses the same torchvision functional ops as the DataLoader path, so unaugmented
batches are identical in both.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DistributedSampler
from torchvision.transforms.v2 import functional as TF

from cifar_lab.data.augment import FIXED_NORMALIZATIONS, ChannelStats
from cifar_lab.data.resumable import EpochPosition, sample_seed


@dataclass(frozen=True)
class BatchAugment:
    """Augmentation done on whole batches by the device loader.

    Args:
        padding: pixels of padding before a random crop back to 32x32 (0 = no crop).
        padding_mode: ``zeros`` pads with black (torchvision's RandomCrop), ``reflect`` mirrors.
        flip: ``random`` flips each image with p=0.5; ``alternate`` flips a fixed random half in
            even epochs and the other half in odd ones, so each image is seen both ways.
        cutout: side of a square set to the mean colour at a random place (0 = off).
    """

    padding: int = 4
    padding_mode: Literal["zeros", "reflect"] = "zeros"
    flip: Literal["none", "random", "alternate"] = "random"
    cutout: int = 0


NO_AUGMENT = BatchAugment(padding=0, flip="none")


def to_device(drawn: Tensor, device: torch.device) -> Tensor:
    """A batch's indices or augmentation draws (made on the CPU: the draws from the batch's seeded generator)
    copied to the images' device without waiting: a blocking copy to a GPU waits for all its queued work, a
    host-device sync per copy. CUDA stages a copy from pageable memory before the call returns, so the CPU tensor
    may go at once."""
    return drawn.to(device, non_blocking=True)


def random_crop(images: Tensor, padding: int, mode: str, generator: torch.Generator) -> Tensor:
    """Pad the batch, then crop 32x32 at an independent random offset per image.

    ``unfold`` views every crop position without copying; one indexing op then picks each image's.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode="constant" if mode == "zeros" else mode)
    offsets = to_device(torch.randint(0, 2 * padding + 1, (2, n), generator=generator), images.device)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # [N, C, rows, cols, h, w]
    return windows[torch.arange(n, device=images.device), :, offsets[0], offsets[1]]


def cutout(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Set a size x size square per image (centred anywhere, clipped at the border) to 0, the mean colour."""
    n, _, h, w = images.shape
    top_left = to_device(torch.randint(0, h, (2, n), generator=generator) - size // 2, images.device)
    ys = torch.arange(h, device=images.device)[None, :]
    xs = torch.arange(w, device=images.device)[None, :]
    rows = (ys >= top_left[0, :, None]) & (ys < top_left[0, :, None] + size)
    cols = (xs >= top_left[1, :, None]) & (xs < top_left[1, :, None] + size)
    return images.masked_fill(rows[:, None, :, None] & cols[:, None, None, :], 0.0)


def normalize(images: Tensor, stats: ChannelStats | tuple[Tensor, Tensor]) -> Tensor:
    """uint8 -> normalised float32 with torchvision's ops, exactly as the per-image pipeline does.

    ``stats`` given as float32 tensors on the images' device (``DeviceLoader``'s) spare torchvision's copy of the
    lists to the device at each call: on a GPU, two blocking copies (host-device syncs) a batch.
    """
    mean, std = stats
    if not isinstance(mean, Tensor):
        mean, std = list(mean), list(std)
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), mean, std)


class DeviceLoader(EpochPosition):
    """Iterable of ``(images, labels)`` batches from uint8 ``[N,3,32,32]`` images already on their device.

    Each batch's augmentation draws from a generator seeded by (seed, epoch, rank, batch number), and the
    loader keeps its place in the epoch for Lightning's checkpoints, so a resumed run continues mid-epoch
    with exactly the batches it would have had.

    Args:
        images, labels: the whole split (moved to the device by the caller, once).
        batch_size: images per batch and process.
        augment: batch augmentation (``NO_AUGMENT`` for val/test).
        shuffle: a new seeded permutation each epoch.
        drop_last: drop the last, smaller batch.
        seed: base seed of the order (epoch ``e`` shuffles with ``seed + e``) and of the augmentation.
        rank, world_size: this process's shard under DDP.
        dtype: dtype of the image batches.
        stats: per-channel (mean, std) the images are normalised with (the ``data.normalize`` choice's).
    """

    batch_sampler = None  # like a DataLoader's: Lightning reads ``sampler`` and ``batch_sampler``

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        augment: BatchAugment = NO_AUGMENT,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        stats: ChannelStats = FIXED_NORMALIZATIONS["none"],
    ) -> None:
        super().__init__()
        self.images, self.labels = images, labels
        self.stats = tuple(torch.tensor(list(values), dtype=torch.float32, device=images.device) for values in stats)
        self.batch_size, self.augment, self.drop_last = batch_size, augment, drop_last
        self.dtype = dtype
        # Only its order is used, so a range stands in for the dataset; Lightning calls its set_epoch.
        self.sampler = DistributedSampler(
            range(len(labels)), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        # Which images start flipped under the alternating scheme: fixed for the whole run.
        self.flip_parity = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed)) < 0.5

    def __len__(self) -> int:
        items = len(self.sampler)
        return items // self.batch_size if self.drop_last else math.ceil(items / self.batch_size)

    def _augment(self, images: Tensor, indices: Tensor, generator: torch.Generator) -> Tensor:
        aug = self.augment
        if aug.padding:
            images = random_crop(images, aug.padding, aug.padding_mode, generator)
        if aug.flip != "none":
            if aug.flip == "random":
                flip = torch.rand(len(images), generator=generator) < 0.5
            else:
                flip = self.flip_parity[indices] ^ bool(self.sampler.epoch % 2)
            flip = to_device(flip, images.device)[:, None, None, None]
            images = torch.where(flip, images.flip(-1), images)
        images = normalize(images, self.stats)
        if aug.cutout:
            images = cutout(images, aug.cutout, generator)
        return images

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: the epoch is read at the first batch, after Lightning has set it.
        epoch = self.sampler.epoch
        start = self.start_batch(epoch)
        yield from self.counted(self._batches(epoch, start), epoch, start)

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.tensor(list(self.sampler), dtype=torch.int64)
        device = self.images.device
        for batch in range(start, len(self)):
            indices = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            on_device = to_device(indices, device)
            generator = torch.Generator().manual_seed(sample_seed(self.sampler.seed, epoch, self.sampler.rank, batch))
            images = self._augment(self.images[on_device], indices, generator)
            yield images.to(self.dtype), self.labels[on_device]
