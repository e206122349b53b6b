"""titan_mimo/schedule.py's arithmetic: how far encoders run ahead of the language model, the
pipeline bubble a schedule should have, and the summed cross-entropy (the runs themselves:
tests/test_layout_invariance.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from titan_mimo.schedule import cross_entropy_sum, encoder_lead, theoretical_bubble_fraction


@pytest.mark.parametrize("schedule, pp, n_mb, ahead, lead", [
    ("1F1B", 1, 4, None, 2),          # no pipelining: one forward ahead, plus one to overlap
    ("1F1B", 2, 4, None, 3),          # torch's 1F1B warms stage 0 up with pp forwards
    ("1F1B", 4, 4, None, 4),          # never more than the step's micro-batches
    ("GPipe", 2, 4, None, 4),         # every forward before any backward
    ("Interleaved1F1B", 2, 8, 4, 5),  # read from the schedule's own action list
])
def test_encoder_lead(schedule, pp, n_mb, ahead, lead):
    assert encoder_lead(schedule, pp, n_mb, ahead) == lead


def test_theoretical_bubble_fraction():
    assert theoretical_bubble_fraction(1, 4) == 0.0
    assert theoretical_bubble_fraction(2, 4) == pytest.approx(1 / 5)
    assert theoretical_bubble_fraction(2, 4, stages_per_rank=2) == pytest.approx(1 / 9)
    assert theoretical_bubble_fraction(4, 8) == pytest.approx(3 / 11)


def test_cross_entropy_sum_skips_ignored_labels_in_float32():
    logits = torch.randn(2, 5, 7, dtype=torch.bfloat16)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    got = cross_entropy_sum(logits, labels)
    assert got.dtype == torch.float32
    keep = labels != -100
    want = F.cross_entropy(logits.float()[keep], labels[keep], reduction="sum")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)  # another summation order
