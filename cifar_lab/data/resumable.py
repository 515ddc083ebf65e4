"""Training batches that depend on the run's seed, the epoch and the position in it, and nothing else.

Per-image augmentation draws from torch's global generator. In DataLoader workers that generator is
seeded per worker, so a run with 2 workers augments differently from one with 0 or 4, and restarted
workers after a resume differ again. Here every training image is augmented under a generator seeded
from (run seed, epoch, image index), and the training loaders remember how many batches of the epoch
they have handed out, so Lightning's loops can checkpoint and restore that position mid-epoch: a
resumed run then sees exactly the batches an uninterrupted one would have, with any number of workers.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cifar_lab.errors import ConfigError

SampleKey = tuple[int, int, int]  # (run seed, epoch, image index): what a training image's augmentation depends on


def run_seed() -> int:
    """The run's seed, as ``seed_everything`` set it (resumed runs restore the same generator state)."""
    return torch.initial_seed() % 2**63


def sample_seed(*keys: int) -> int:
    """A 64-bit seed derived from non-negative integers: distinct keys give independent streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the body under torch's CPU generator seeded with ``seed``, then put the generator back as it was,
    so the draws of the training step (dropout, ...) never depend on how many images were augmented here."""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)  # not torch.manual_seed, which also seeds (and initialises) CUDA: 100x slower
    try:
        yield
    finally:
        generator.set_state(state)


class EpochPosition:
    """How many batches of which epoch a training loader has handed out: its ``state_dict`` for Lightning.

    Lightning saves the state of every training loader with a ``state_dict``/``load_state_dict`` in its
    checkpoints (mid-epoch ones included) and loads it back before the resumed epoch's first batch. Lightning
    reads sized loaders one batch at a time, so the batches handed out are exactly the batches trained on.
    The loader's ``sampler`` is a ``DistributedSampler``: its ``num_replicas`` is the process count saved.
    """

    sampler: DistributedSampler

    def __init__(self) -> None:
        self.position = (0, 0)  # (epoch, batches handed out in it)
        self.resume_at: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self.position
        return {"epoch": epoch, "batches": batches, "world_size": self.sampler.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.sampler.num_replicas and 0 < state["batches"] < len(self):
            raise ConfigError(f"this checkpoint was saved in the middle of an epoch by {state['world_size']} "
                              f"process(es); resume it with trainer.devices/num_nodes giving {state['world_size']} "
                              f"processes, or from a checkpoint saved at an epoch's end")
        self.resume_at = (state["epoch"], state["batches"])

    def __len__(self) -> int:
        raise NotImplementedError

    def start_batch(self, epoch: int) -> int:
        """The batch ``epoch`` starts at: where the checkpoint left it when resuming into it, else 0."""
        resume_at, self.resume_at = self.resume_at, None
        return resume_at[1] if resume_at is not None and resume_at[0] == epoch else 0

    def counted(self, batches: Iterator[Any], epoch: int, start: int) -> Iterator[Any]:
        self.position = (epoch, start)
        for batch in batches:
            self.position = (epoch, self.position[1] + 1)
            yield batch


class SeededSampler(DistributedSampler):
    """A ``DistributedSampler`` (one shard per process; Lightning sets its epoch) that yields ``SampleKey``s
    and can start an epoch part-way, after ``skip`` of this process's images."""

    def __init__(self, size: int, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[SampleKey]:
        indices = list(super().__iter__())[self.skip:]
        self.skip = 0
        return iter([(self.seed, self.epoch, index) for index in indices])


class ResumableDataLoader(EpochPosition, DataLoader):
    """A ``DataLoader`` over a ``SeededSampler`` that can continue an epoch from a checkpoint's position.

    Its random streams come from the sampler's keys and its own ``generator`` (never torch's global one),
    so neither the number of workers nor restarting them changes a batch.
    """

    def __init__(self, dataset: Any, sampler: SeededSampler, batch_size: int, **kwargs: Any) -> None:
        DataLoader.__init__(self, dataset, batch_size=batch_size, sampler=sampler,
                            generator=torch.Generator().manual_seed(sampler.seed), **kwargs)
        EpochPosition.__init__(self)

    def __len__(self) -> int:
        return DataLoader.__len__(self)

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing runs (and no worker reads the sampler) before Lightning has set the epoch.
        epoch = self.sampler.epoch
        start = self.start_batch(epoch)
        self.sampler.skip = start * self.batch_size
        yield from self.counted(DataLoader.__iter__(self), epoch, start)
