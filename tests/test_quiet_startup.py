"""Lightning's start-up lines that ask nothing of a user are dropped; the ones that inform stay."""

import logging

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from cifar_lab.cli.app import CHATTER, LIGHTNING_INFO_LOGGERS, silence_startup_chatter


class Recorder(logging.Handler):
    """Keeps the messages a logger passes on (after its filters), whatever propagation the process set up."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_advertisements_and_absent_accelerators_are_dropped_and_the_device_line_kept() -> None:
    silence_startup_chatter()
    loggers = [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]  # which one Lightning uses depends
    recorder, levels = Recorder(), [logger.level for logger in loggers]     # on the order of its imports
    for logger in loggers:
        logger.addHandler(recorder)
        logger.setLevel(logging.INFO)
    try:
        L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing a cloud logger")
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(recorder)
            logger.setLevel(level)
    assert "GPU available: False, used: False" in recorder.messages
    assert not [message for message in recorder.messages if message.startswith(CHATTER)]
    assert all(len(logger.filters) == len(set(map(type, logger.filters))) for logger in loggers)  # added once
