"""Where a step's wall time goes on one rank: `StepTiming` (bridge waits, the pipeline schedule
and this rank's own stage work within it), the clock that measures spans of device work
without making the host wait (`SpanClock`, read later as `Spans`), and the labelled spans of a
recorded step (`Timeline`, lined up across ranks by `host_clock_offset`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def device_mark(is_cuda: bool):
    """A point in the device's timeline: a timed CUDA event recorded now on the current stream
    (when the work queued so far has run), or the host clock on CPU."""
    if is_cuda:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


class Timeline:
    """This rank's labelled spans of work on the steps it records (`metrics.timeline_steps`),
    for the step's timeline of every rank (`titan_mimo/timeline.py`).

    A recorded step runs between `begin()` and `end()`; every `span(...)` inside marks its start
    and end on the same clock as `SpanClock`: timed CUDA events on the current stream (device
    time: when the work ran, not when it was queued), host `time.perf_counter()` on CPU. Spans
    opened inside another span record their nesting `depth` (a bridge receive inside a stage
    forward). Outside a recorded step `span()` only yields: no event, no clock read, no wait.

    `end()` is the one wait of a recorded step: it records a last event, waits for it and reads
    the host clock, which places every event of the step on the host clock. `offset_s` (this
    rank's host clock to rank 0's, `host_clock_offset`) then lines the ranks up.
    """

    def __init__(self, device: torch.device, offset_s: float = 0.0):
        self.is_cuda = device.type == "cuda"
        self.offset_s = offset_s
        """Seconds to add to this rank's host clock to read rank 0's."""
        self.is_recording = False
        self._marks: list = []
        """(kind, module, mb, stage, what, depth, start mark, end mark) of the step, in start order."""
        self._depth = 0
        self._window: tuple | None = None
        self._resolved: list[dict] | None = None

    def begin(self) -> None:
        """Start recording a step (forgetting a recorded step not taken)."""
        self.is_recording, self._marks, self._depth, self._resolved = True, [], 0, None
        self._window = (device_mark(self.is_cuda), None)

    @contextmanager
    def span(self, kind: str, module: str, *, mb: int | None = None, stage: int | None = None,
             what: str = ""):
        """Work of `kind` ("forward", "bridge_wait", "optimizer", ...) by `module`, for
        micro-batch `mb` of pipeline stage `stage` where those apply; `what` says what it is of
        where kind and module do not (a bridge wait's "embeddings", "gradients" or "sends")."""
        if not self.is_recording:
            yield
            return
        entry = [kind, module, mb, stage, what, self._depth, device_mark(self.is_cuda), None]
        self._marks.append(entry)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            entry[7] = device_mark(self.is_cuda)

    def end(self) -> None:
        """End the recorded step: wait for its last mark and place every mark on the host clock."""
        end_mark = device_mark(self.is_cuda)
        self.is_recording = False
        if self.is_cuda:
            end_mark.synchronize()
            now = time.perf_counter()

            def host(event) -> float:
                return now - event.elapsed_time(end_mark) / 1e3
        else:
            def host(t: float) -> float:
                return t
        self._window = (host(self._window[0]), host(end_mark))
        self._resolved = [{"kind": k, "module": m, "mb": mb, "stage": s, "what": w, "depth": d,
                           "start": host(t0), "end": host(t1)} for k, m, mb, s, w, d, t0, t1 in self._marks]
        self._marks = []

    @contextmanager
    def host_span(self, kind: str, module: str = "", what: str = ""):
        """Host work that belongs to the recorded step after `end()` (the checkpoint save that
        blocks the loop), on the host clock; nothing unless a recorded step waits to be taken."""
        if self._resolved is None:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._resolved.append({"kind": kind, "module": module, "mb": None, "stage": None, "what": what,
                                   "depth": 0, "start": t0, "end": time.perf_counter()})

    def take(self) -> dict | None:
        """The recorded step (None if none): its window ("start", "end") and "spans", in seconds
        on rank 0's host clock, the "offset_s" that put them there and the "clock" that timed
        them ("cuda" events or "host"); hands it over (the timeline is empty after)."""
        if self._resolved is None:
            return None
        shift = self.offset_s
        spans = [{**s, "start": s["start"] + shift, "end": s["end"] + shift} for s in self._resolved]
        start, end = self._window
        self._resolved, self._window = None, None
        return {"start": start + shift, "end": end + shift, "offset_s": shift,
                "clock": "cuda" if self.is_cuda else "host", "spans": spans}


def host_clock_offset(host_group, rounds: int = 8) -> float:
    """Seconds to add to this rank's `time.perf_counter()` to read rank 0's, measured once at
    start-up (every rank calls this): each rank sends rank 0 `rounds` pings and takes, from the
    one with the shortest round trip, rank 0's reading minus the round trip's midpoint (error
    at most half that round trip). Clocks of one machine agree already; across machines this
    lines the ranks' timelines up."""
    rank, world = dist.get_rank(), dist.get_world_size()
    buf = torch.zeros(1, dtype=torch.float64)
    if rank == 0:
        for peer in range(1, world):
            for _ in range(rounds):
                dist.recv(buf, peer, group=host_group)
                buf[0] = time.perf_counter()
                dist.send(buf, peer, group=host_group)
        return 0.0
    best_rtt, offset = float("inf"), 0.0
    for _ in range(rounds):
        t_sent = time.perf_counter()
        dist.send(buf, 0, group=host_group)
        dist.recv(buf, 0, group=host_group)
        t_back = time.perf_counter()
        if t_back - t_sent < best_rtt:
            best_rtt, offset = t_back - t_sent, float(buf[0]) - (t_sent + t_back) / 2
    return offset
