"""titan_mimo/data/plan.py: which slots of a micro-batch go from each encoder dp rank to each
language one (`overlaps`)."""

import pytest

from titan_mimo.data.plan import overlaps


def test_overlaps_fan_in():
    assert overlaps(4, 4, 2) == [(0, 0, 0, 1), (1, 0, 1, 2), (2, 1, 2, 3), (3, 1, 3, 4)]


def test_overlaps_fan_out():
    assert overlaps(4, 1, 2) == [(0, 0, 0, 2), (0, 1, 2, 4)]


def test_overlaps_one_to_one():
    assert overlaps(4, 2, 2) == [(0, 0, 0, 2), (1, 1, 2, 4)]
    assert overlaps(3, 1, 1) == [(0, 0, 0, 3)]


def test_overlaps_three_to_two_partial():
    # 6 slots: src owns [0,2) [2,4) [4,6), dst owns [0,3) [3,6); src 1 straddles both.
    got = overlaps(6, 3, 2)
    assert got == [(0, 0, 0, 2), (1, 0, 2, 3), (1, 1, 3, 4), (2, 1, 4, 6)]
    assert sum(hi - lo for _, _, lo, hi in got) == 6


@pytest.mark.parametrize("n, src_dp, dst_dp, bad_dp", [(4, 3, 2, 3), (4, 2, 3, 3), (6, 3, 4, 4)])
def test_overlaps_uneven_split(n, src_dp, dst_dp, bad_dp):
    match = rf"^{n} samples per micro-batch do not split over dp = {bad_dp}$"
    with pytest.raises(ValueError, match=match):
        overlaps(n, src_dp, dst_dp)
