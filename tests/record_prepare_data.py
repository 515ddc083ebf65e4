"""``python -m tests.record_prepare_data <cifar-lab args>``: the CLI, with each call of the DataModule's
``prepare_data`` appended to the file ``$PREPARE_RECORD`` as the calling process's rank.

DDP re-launches this same module for the other ranks, so the file shows which processes prepared data.
"""

import os

from cifar_lab.cli import main
from cifar_lab.data import ImageDataModule

prepare_data = ImageDataModule.prepare_data


def recording_prepare_data(self: ImageDataModule) -> None:
    with open(os.environ["PREPARE_RECORD"], "a") as record:
        record.write(f"{self.trainer.global_rank}\n")
    prepare_data(self)


if __name__ == "__main__":
    ImageDataModule.prepare_data = recording_prepare_data
    main()
