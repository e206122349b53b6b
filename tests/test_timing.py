"""titan_mimo/timing.py: spans of work summed on the host clock (CPU), and the pipeline bubble
they give."""

from __future__ import annotations

import time

import pytest
import torch

from titan_mimo.timing import Spans, SpanClock, StepTiming


def test_span_clock_sums_spans_and_hands_them_over():
    clock = SpanClock(torch.device("cpu"))
    for _ in range(2):
        with clock.span():
            time.sleep(0.01)
    spans = clock.take()
    assert 0.02 <= spans.total_s() < 1.0
    assert clock.take().total_s() == 0.0  # taken: the clock starts again from nothing


def test_bubble_is_the_schedule_time_outside_the_stage_work():
    timing = StepTiming(schedule=Spans(1.0, []), stage_work=Spans(0.75, []))
    assert timing.bubble_s == pytest.approx(0.25) and timing.bubble_fraction == pytest.approx(0.25)
    # Clock noise never makes a negative bubble; no schedule (pp = 1), no bubble.
    assert StepTiming(schedule=Spans(1.0, []), stage_work=Spans(1.01, [])).bubble_s == 0.0
    assert StepTiming().bubble_s == StepTiming().bubble_fraction == 0.0
