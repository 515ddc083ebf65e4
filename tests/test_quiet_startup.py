"""Lightning's start-up lines that ask nothing of a user are dropped; the ones that inform stay."""

import logging

import lightning as L
import pytest

from cifar_lab.cli.app import CHATTER, silence_startup_chatter


def test_advertisements_and_absent_accelerators_are_dropped_and_the_device_line_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    silence_startup_chatter()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
        rank_zero.info("💡 Tip: For seamless cloud logging, try installing a cloud logger")
        rank_zero.info("GPU available: False, used: False")
    messages = [record.getMessage() for record in caplog.records]
    assert "GPU available: False, used: False" in messages
    assert not [message for message in messages if message.startswith(CHATTER)]
    assert rank_zero.filters and len(rank_zero.filters) == len(set(map(type, rank_zero.filters)))  # added once
