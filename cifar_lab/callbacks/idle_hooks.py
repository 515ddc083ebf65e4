"""Leave out of Lightning's per-batch dispatch the hooks a callback does not implement."""

from collections.abc import Iterable

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

# The hooks Lightning calls on every callback at every batch: its training loop, optimizer loop, evaluation and
# prediction loops, each through `_call_callback_hooks`.
BATCH_HOOKS = (
    "on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "on_train_batch_end",
    "on_validation_batch_start", "on_validation_batch_end", "on_test_batch_start", "on_test_batch_end",
    "on_predict_batch_start", "on_predict_batch_end",
)


def skip_idle_batch_hooks(callbacks: Iterable[Callback]) -> None:
    """Set to ``None``, on each callback, the per-batch hooks that cannot do anything in this run.

    Lightning calls every per-batch hook of every callback, implemented or not, each call under a profiler
    context named after the callback's ``state_key``: a few µs a call on our CPU, and 78 calls a training
    step for the 13 callbacks of a default run, of which 6 reach a hook that does something
    (``docs/performance.md``). Its dispatch calls a hook only where the attribute is callable, so a ``None``
    on the instance is passed over. Idle are the hooks left as ``Callback``'s empty default, and the
    batch-end hook of a ``ModelCheckpoint`` that saves only at epoch ends (no step or time trigger), which
    returns after its checks; a hook the instance itself defines is left alone. No run does anything
    differently for it.
    """
    for callback in callbacks:
        for hook in BATCH_HOOKS:
            if hook not in vars(callback) and is_idle(callback, hook):
                setattr(callback, hook, None)


def is_idle(callback: Callback, hook: str) -> bool:
    """Whether ``hook`` of ``callback``'s class does nothing for this callback."""
    if getattr(type(callback), hook) is getattr(Callback, hook):
        return True
    return hook == "on_train_batch_end" and saves_at_epoch_ends_only(callback)


def saves_at_epoch_ends_only(callback: Callback) -> bool:
    """A ``ModelCheckpoint`` with neither ``every_n_train_steps`` nor ``train_time_interval`` set."""
    return (isinstance(callback, ModelCheckpoint) and callback._every_n_train_steps < 1
            and callback._train_time_interval is None)
