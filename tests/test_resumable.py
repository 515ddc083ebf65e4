"""Training loaders whose batches depend on the seed, the epoch and the position alone, and that continue an
epoch from a checkpoint's position: the DataLoader path and the device loader."""

import pytest
import torch
from torchvision.transforms import v2

from cifar_lab.data.datamodule import ImageArrayDataset
from cifar_lab.data.device_loader import BatchAugment, DeviceLoader
from cifar_lab.data.resumable import ResumableDataLoader, SeededSampler, sample_seed, seeded_rng
from cifar_lab.errors import ConfigError

IMAGES = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
CROP_FLIP = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32)])


def dataloader(**kwargs) -> ResumableDataLoader:
    sampler = SeededSampler(len(IMAGES), num_replicas=1, rank=0, shuffle=True, seed=5)
    return ResumableDataLoader(ImageArrayDataset(IMAGES, torch.arange(len(IMAGES)), CROP_FLIP), sampler, 8, **kwargs)


def device_loader() -> DeviceLoader:
    return DeviceLoader(IMAGES, torch.arange(len(IMAGES)), 8, augment=BatchAugment(cutout=8), shuffle=True, seed=5)


def epoch(loader, number: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(number)
    return list(loader)


def assert_same_batches(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    for (images, labels), (their_images, their_labels) in zip(ours, theirs, strict=True):
        assert torch.equal(labels, their_labels) and torch.equal(images, their_images)


def test_an_image_is_augmented_the_same_whatever_was_drawn_before_and_the_global_generator_is_left_alone() -> None:
    dataset = ImageArrayDataset(IMAGES, torch.arange(len(IMAGES)), CROP_FLIP)
    first = dataset[(5, 2, 7)][0]
    torch.rand(100)
    before = torch.get_rng_state()
    assert torch.equal(dataset[(5, 2, 7)][0], first)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(dataset[(5, 3, 7)][0], first)  # another epoch, another crop


def test_seeded_rng_gives_the_seeds_stream_and_restores_the_generator() -> None:
    torch.manual_seed(0)
    with seeded_rng(sample_seed(1, 2, 3)):
        drawn = torch.rand(4)
    after = torch.rand(3)  # the global stream goes on as if nothing had been drawn in between
    assert torch.equal(drawn, torch.rand(4, generator=torch.Generator().manual_seed(sample_seed(1, 2, 3))))
    assert torch.equal(after, torch.rand(3, generator=torch.Generator().manual_seed(0)))


def test_worker_processes_give_the_batches_of_the_training_process() -> None:
    assert_same_batches(epoch(dataloader(num_workers=2), 1), epoch(dataloader(), 1))


@pytest.mark.parametrize("make_loader", [dataloader, device_loader], ids=["dataloader", "device"])
def test_a_loader_restored_mid_epoch_hands_out_the_rest_of_that_epoch_then_whole_epochs(make_loader) -> None:
    straight = make_loader()
    batches = epoch(straight, 2)
    first = make_loader()
    first.sampler.set_epoch(2)
    iterator = iter(first)
    next(iterator), next(iterator)
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 2, "world_size": 1}

    resumed = make_loader()
    resumed.load_state_dict(state)
    assert_same_batches(epoch(resumed, 2), batches[2:])
    assert len(resumed) == len(batches)  # Lightning counts the epoch's batches from its length
    assert_same_batches(epoch(resumed, 3), epoch(straight, 3))


def test_resuming_mid_epoch_on_another_process_count_is_a_one_line_error() -> None:
    loader = device_loader()
    with pytest.raises(ConfigError, match=r"saved in the middle of an epoch by 2 process\(es\); resume it with "
                                          r"trainer.devices/num_nodes giving 2 processes"):
        loader.load_state_dict({"epoch": 0, "batches": 2, "world_size": 2})
    loader.load_state_dict({"epoch": 0, "batches": len(loader), "world_size": 2})  # an epoch's end is fine
