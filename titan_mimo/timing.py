"""Where a step's wall time goes on one rank: `StepTiming` (bridge waits, the pipeline schedule
and this rank's own stage work within it) and the clock that measures spans of device work
without making the host wait (`SpanClock`, read later as `Spans`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(kw_only=True)
class StepTiming:
    """Where one run's wall time went on this rank (seconds)."""

    run_s: float = 0.0
    """The whole run: every role's forward (+ backward) of every micro-batch."""
    bridge_wait_s: float = 0.0
    """Blocked on bridge receives (embeddings on the language first stage, gradients on encoders)."""
    schedule: Spans | None = None
    """Inside the language model's pipeline schedule (none unless this rank is a pp > 1 language rank)."""
    stage_work: Spans | None = None
    """Inside this rank's own stage work within the schedule; includes the first stage's bridge
    waits, since the bridge is received inside the stage forward. Both are stream time on CUDA
    (`SpanClock`), read when first asked for: after the step is done, nothing waits."""

    @property
    def schedule_s(self) -> float:
        return self.schedule.total_s() if self.schedule is not None else 0.0

    @property
    def stage_work_s(self) -> float:
        return self.stage_work.total_s() if self.stage_work is not None else 0.0

    @property
    def bubble_s(self) -> float:
        """Idle in the pipeline schedule: waiting for neighbouring stages' activations/gradients."""
        return max(0.0, self.schedule_s - self.stage_work_s)

    @property
    def bubble_fraction(self) -> float:
        return self.bubble_s / self.schedule_s if self.schedule_s > 0 else 0.0


class Spans:
    """Spans of work timed by a `SpanClock`: host seconds (CPU) or pairs of CUDA events."""

    def __init__(self, host_s: float, events: list):
        self._host_s, self._events, self._total_s = host_s, events, None

    def total_s(self) -> float:
        """On CUDA this waits for the last span's work: ask once the step is done."""
        if self._total_s is None:
            if self._events:
                self._events[-1][1].synchronize()
            self._total_s = self._host_s + sum(start.elapsed_time(end) for start, end in self._events) / 1e3
        return self._total_s


class SpanClock:
    """Sums the durations of spans of work: host wall time on CPU; on CUDA, time on the current
    stream between events recorded around each span (kernels run asynchronously, so host time
    would only count their launches, and a pipeline's waits are stream waits, not host waits).
    `take()` hands the spans so far over, to be read later (`Spans.total_s`)."""

    def __init__(self, device: torch.device):
        self.is_cuda = device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        self._host_s = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def take(self) -> Spans:
        spans = Spans(self._host_s, self._events)
        self.reset()
        return spans

    @contextmanager
    def span(self):
        if self.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._host_s += time.perf_counter() - t0
