"""The on-device loader: exact epoch coverage, seeded order, DDP shards, augmentation against
torchvision's functional ops, and batches identical to the DataLoader path where nothing is random."""

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DistributedSampler
from torchvision.transforms.v2 import functional as TF

from cifar_lab.data import ImageDataModule
from cifar_lab.data.device_loader import (
    BatchAugment,
    DeviceLoader,
    cutout,
    random_crop,
)
from cifar_lab.module import ImageClassifier


def identity_loader(n: int = 103, batch_size: int = 10, **kwargs) -> DeviceLoader:
    """Labels are the image indices, so batches tell which images they hold."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    return DeviceLoader(images, torch.arange(n), batch_size, **kwargs)


def epoch_labels(loader: DeviceLoader, epoch: int = 0) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    return torch.cat([labels for _, labels in loader])


def test_every_image_once_per_epoch_in_a_seeded_order() -> None:
    loader = identity_loader(shuffle=True, seed=3)
    first = epoch_labels(loader, 0)
    assert len(loader) == 11 and torch.equal(first.sort().values, torch.arange(103))
    assert not torch.equal(first, torch.arange(103))
    assert torch.equal(first, epoch_labels(identity_loader(shuffle=True, seed=3), 0))
    assert not torch.equal(first, epoch_labels(identity_loader(shuffle=True, seed=4), 0))
    assert not torch.equal(first, epoch_labels(loader, 1))


def test_drop_last_drops_only_the_incomplete_batch() -> None:
    loader = identity_loader(shuffle=True, drop_last=True)
    labels = epoch_labels(loader)
    assert len(loader) == 10 and len(labels) == 100 and len(set(labels.tolist())) == 100


@pytest.mark.parametrize("n", [100, 101])
@pytest.mark.parametrize("epoch", [0, 1])
def test_ddp_shards_are_equal_sized_disjoint_and_cover_the_split(n: int, epoch: int) -> None:
    shards = [epoch_labels(identity_loader(n, shuffle=True, rank=rank, world_size=2), epoch) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    union = torch.cat(shards)
    assert set(union.tolist()) == set(range(n))  # every image, in every epoch
    assert len(union) - len(set(union.tolist())) == n % 2  # an odd split repeats one image to even out


def test_ddp_order_is_distributed_samplers() -> None:
    for rank in (0, 1):
        loader = identity_loader(101, shuffle=True, seed=5, rank=rank, world_size=2)
        sampler = DistributedSampler(range(101), num_replicas=2, rank=rank, shuffle=True, seed=5)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            assert epoch_labels(loader, epoch).tolist() == list(sampler)


def test_lightning_sets_the_epoch_of_the_order(npz_dir: Path) -> None:
    seen = []

    class RecordEpoch(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
            seen.append(trainer.train_dataloader.sampler.epoch)

    dm = ImageDataModule(str(npz_dir), download=False, val_size=50, batch_size=8, loader="device")
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[RecordEpoch()])
    trainer.fit(ImageClassifier("simple_cnn"), dm)
    assert seen == [0, 1, 2]


def test_random_crop_matches_torchvision_pad_and_crop() -> None:
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    for mode, tv_mode in (("zeros", "constant"), ("reflect", "reflect")):
        cropped = random_crop(images, 4, mode, torch.Generator().manual_seed(0))
        offsets = torch.randint(0, 9, (2, 6), generator=torch.Generator().manual_seed(0))
        for i in range(6):
            padded = TF.pad(images[i], [4], padding_mode=tv_mode)
            expected = TF.crop(padded, int(offsets[0, i]), int(offsets[1, i]), 32, 32)
            assert torch.equal(cropped[i], expected)


def test_alternate_flip_shows_each_image_both_ways_over_two_epochs() -> None:
    loader = identity_loader(n=40, batch_size=40, augment=BatchAugment(padding=0, flip="alternate"))
    plain = identity_loader(n=40, batch_size=40)
    plain.images = loader.images
    original = next(iter(plain))[0]
    mirrored = TF.horizontal_flip(original)
    flipped = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        batch = next(iter(loader))[0]
        is_flipped = torch.tensor([torch.equal(b, m) for b, m in zip(batch, mirrored)])
        assert all(torch.equal(b, o) or f for b, o, f in zip(batch, original, is_flipped))
        flipped.append(is_flipped)
    assert torch.equal(flipped[0], ~flipped[1]) and 0 < flipped[0].sum() < 40


def test_cutout_zeroes_one_square_per_image() -> None:
    images = torch.ones(50, 3, 32, 32)
    out = cutout(images, 8, torch.Generator().manual_seed(0))
    zeroed = (out == 0).all(dim=1).sum(dim=(1, 2))  # pixels zeroed per image (clipped at the border)
    assert (zeroed <= 64).all() and (zeroed > 0).all() and (zeroed == 64).any()
    assert ((out == 0) | (out == 1)).all()


@pytest.mark.parametrize("normalize", ["dataset", "half", "none"])
def test_eval_batches_equal_the_dataloader_path(npz_dir: Path, normalize: str) -> None:
    options = {"data_dir": str(npz_dir), "download": False, "val_size": 50, "batch_size": 16, "num_workers": 0,
               "normalize": normalize}
    device_dm = ImageDataModule(**options, loader="device")
    torch_dm = ImageDataModule(**options)
    for dm in (device_dm, torch_dm):
        dm.setup("fit")
    for split in ("val_dataloader", "test_dataloader"):
        for (x1, y1), (x2, y2) in zip(getattr(device_dm, split)(), getattr(torch_dm, split)(), strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_training_batches_are_augmented_and_normalised(npz_dir: Path) -> None:
    dm = ImageDataModule(str(npz_dir), download=False, val_size=50, batch_size=32, loader="device",
                           batch_augment=BatchAugment(padding=2, padding_mode="reflect", flip="random", cutout=4))
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert images.is_contiguous()  # NCHW: channels_last is the model's knob
    assert labels.dtype == torch.int64 and -3 < images.mean() < 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device syncs exist on a CUDA device only")
def test_training_batches_on_a_gpu_are_drawn_without_a_host_device_sync() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    loader = DeviceLoader(images, torch.arange(64, device="cuda"), 16, shuffle=True, stats=((0.5,) * 3, (0.25,) * 3),
                          augment=BatchAugment(padding=2, padding_mode="reflect", flip="random", cutout=8))
    torch.cuda.set_sync_debug_mode("error")  # a blocking copy or a read-back raises
    try:
        batches = list(loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(batches) == 4 and all(batch.shape == (16, 3, 32, 32) for batch, _ in batches)
