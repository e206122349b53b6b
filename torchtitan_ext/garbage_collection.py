"""Python garbage collection during training, on torchtitan's `tools.utils.GarbageCollection`.
Checked on torchtitan 0.2.2 (`TORCHTITAN_CHECKED`): its constructor turns automatic collection
off (`gc.disable()`) and collects once; `run(step)` collects generation 1 every `gc_freq` steps
(not at step 1); `collect(reason)` collects generation 1 now."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from torchtitan.tools.utils import GarbageCollection

__all__ = ["FirstStepGarbageCollection", "garbage_collection"]


class FirstStepGarbageCollection(GarbageCollection):
    """torchtitan's GarbageCollection plus one collection after the first step of a run.

    The first step compiles (torch.compile, Triton autotuning), which leaves reference cycles that
    still hold device tensors it traced with; with automatic collection off they would stay until
    the first periodic collection, gc_freq steps later, and raise every step's memory peak until
    then (on the 2B hybrid at batch 2: +1.1 GiB, enough to make the caching allocator retry)."""

    def __init__(self, gc_freq: int):
        super().__init__(gc_freq=gc_freq)
        self.seen_first_step = False

    def run(self, step_count: int) -> None:
        if not self.seen_first_step:
            self.seen_first_step = True
            self.collect("after the run's first step (compilation leftovers)")
            return
        super().run(step_count)


@contextmanager
def garbage_collection(gc_freq: int) -> Iterator[FirstStepGarbageCollection | None]:
    """Python's automatic collection off during training; a generation-1 collection after the
    run's first step and every `gc_freq` steps (`handler.run(step)` after each step); automatic
    collection as it was afterwards. gc_freq = 0 yields None and changes nothing."""
    if gc_freq <= 0:
        yield None
        return
    was_enabled = gc.isenabled()
    handler = FirstStepGarbageCollection(gc_freq)
    try:
        yield handler
    finally:
        if was_enabled:
            gc.enable()
