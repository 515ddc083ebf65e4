"""Lightning's start-up lines that ask nothing of a user are dropped; the ones that inform stay."""

import logging

import lightning as L

from cifar_lab.cli.app import CHATTER, silence_startup_chatter


class Recorder(logging.Handler):
    """Keeps the messages a logger passes on (after its filters), whatever propagation the process set up."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_advertisements_and_absent_accelerators_are_dropped_and_the_device_line_kept() -> None:
    silence_startup_chatter()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    recorder, level = Recorder(), rank_zero.level
    rank_zero.addHandler(recorder)
    rank_zero.setLevel(logging.INFO)
    try:
        L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
        rank_zero.info("💡 Tip: For seamless cloud logging, try installing a cloud logger")
        rank_zero.info("GPU available: False, used: False")
    finally:
        rank_zero.removeHandler(recorder)
        rank_zero.setLevel(level)
    assert recorder.messages.count("GPU available: False, used: False") == 2  # the Trainer's line and ours
    assert not [message for message in recorder.messages if message.startswith(CHATTER)]
    assert len(rank_zero.filters) == len(set(map(type, rank_zero.filters)))  # added once, however often called
