"""The Trainer's profiler when a run asks for none: Lightning's default one, without its cost per hook call."""

import contextlib
from contextlib import AbstractContextManager

from lightning.pytorch.profilers import PassThroughProfiler

NOTHING_TO_PROFILE = contextlib.nullcontext()  # holds no state, so one serves every call, nested or not


class NullProfiler(PassThroughProfiler):
    """Profiles nothing, as ``PassThroughProfiler`` does, but hands back one shared null context.

    Lightning wraps every hook of every callback, every step, in ``profiler.profile(...)``: about 190 calls a
    step in a ``cifar-lab fit``. ``PassThroughProfiler``'s is a generator context manager, about 1.3 µs a call
    on our CPU (about 0.2 ms a step); a null context takes 0.25 µs.
    """

    def profile(self, action_name: str) -> AbstractContextManager:
        return NOTHING_TO_PROFILE
