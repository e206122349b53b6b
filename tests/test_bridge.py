"""titan_mimo/bridge.py: each rank's routes across the bridge, from the two placements alone
(no process group): which slots of a micro-batch it sends where, and receives from whom."""

from __future__ import annotations

import torch

from titan_mimo.bridge import Bridge, Route
from titan_mimo.topology import Placement


def _placement(name: str, start: int, *, dp: int = 1, tp: int = 1, pp: int = 1) -> Placement:
    return Placement(name=name, start=start, size=pp * dp * tp, pp=pp, dp_replicate=1, dp_shard=dp, tp=tp,
                     feeds="language" if name == "vision" else "")


def _routes(encoder: Placement, language: Placement, slots: int, side: str, rank: int) -> list[tuple]:
    bridge = Bridge(encoder=encoder, language=language, rank=rank, slots_per_microbatch=slots, hidden=4,
                    dtype=torch.float32, device=torch.device("cpu"))
    return [(r.send_to, r.recv_from, r.lo, r.hi) for r in bridge.routes(side)]


def test_fan_in_two_encoder_ranks_to_one_language_rank():
    enc, lm = _placement("vision", 0, dp=2), _placement("language", 2)
    assert _routes(enc, lm, 2, "encoder", 0) == [([2], 2, 0, 1)]
    assert _routes(enc, lm, 2, "encoder", 1) == [([2], 2, 1, 2)]
    # The language rank receives slot 0 from encoder rank 0 and slot 1 from rank 1 (its
    # gradients go back the same way).
    assert _routes(enc, lm, 2, "language", 2) == [([0], 0, 0, 1), ([1], 1, 1, 2)]


def test_fan_out_one_encoder_rank_to_two_language_ranks():
    enc, lm = _placement("vision", 0), _placement("language", 1, dp=2)
    assert _routes(enc, lm, 4, "encoder", 0) == [([1], 1, 0, 2), ([2], 2, 2, 4)]
    assert _routes(enc, lm, 4, "language", 1) == [([0], 0, 0, 2)]
    assert _routes(enc, lm, 4, "language", 2) == [([0], 0, 2, 4)]


def test_uneven_overlaps_split_a_rank_over_two_peers():
    # 6 slots: encoder ranks own [0,2) [2,4) [4,6), language ranks [0,3) [3,6).
    enc, lm = _placement("vision", 0, dp=3), _placement("language", 3, dp=2)
    assert _routes(enc, lm, 6, "encoder", 1) == [([3], 3, 2, 3), ([4], 4, 3, 4)]
    assert _routes(enc, lm, 6, "language", 4) == [([1], 1, 3, 4), ([2], 2, 4, 6)]


def test_tensor_parallel_sides_send_from_tp_0_to_every_tp_rank():
    """An encoder replica with tp 2 sends from its tp 0 rank only; every tp rank of the language
    replica receives (no broadcast inside its TP group), and only its tp 0 rank sends the
    gradient back."""
    enc, lm = _placement("vision", 0, tp=2), _placement("language", 2, tp=2)
    assert _routes(enc, lm, 2, "encoder", 0) == [([2, 3], 2, 0, 2)]
    assert _routes(enc, lm, 2, "encoder", 1) == [([], 2, 0, 2)]
    assert _routes(enc, lm, 2, "language", 2) == [([0, 1], 0, 0, 2)]
    assert _routes(enc, lm, 2, "language", 3) == [([], 0, 0, 2)]


def test_a_pipelined_language_model_is_reached_at_its_first_stage():
    enc, lm = _placement("vision", 0, dp=2), _placement("language", 2, dp=2, pp=2)
    # Language ranks 2, 3 are stage 0 (dp 0, 1); 4, 5 stage 1, which the bridge never reaches.
    assert _routes(enc, lm, 2, "encoder", 0) == [([2], 2, 0, 1)]
    assert _routes(enc, lm, 2, "encoder", 1) == [([3], 3, 1, 2)]


def test_routes_cover_every_slot_once():
    enc, lm = _placement("vision", 0, dp=4), _placement("language", 4, dp=2, tp=2)
    slots = 8
    sent = sorted((lo, hi) for rank in enc.ranks for _, _, lo, hi in _routes(enc, lm, slots, "encoder", rank))
    received = sorted({(lo, hi) for rank in lm.ranks for _, _, lo, hi in _routes(enc, lm, slots, "language", rank)})
    assert sent == received and sum(hi - lo for lo, hi in sent) == slots
    assert all(isinstance(r, Route) for r in Bridge(encoder=enc, language=lm, rank=0, slots_per_microbatch=slots,
                                                    hidden=4, dtype=torch.float32,
                                                    device=torch.device("cpu")).routes("encoder"))
