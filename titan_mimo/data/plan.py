"""The sample plan: which global sample index every (step, micro-batch, slot) holds, and which
rank owns it on each side of a bridge. It depends on the config alone, so every rank of every
module agrees on it without communicating; encoder and language ranks therefore load the
same samples, whatever the placement.

A step holds `global_batch_size` samples in `n_microbatches` micro-batches of
`micro_batch_size * language_dp` samples each. Inside a micro-batch, a module with dp ranks
owns equal contiguous ranges: rank d owns [d * n / dp, (d + 1) * n / dp).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class SamplePlan:
    global_batch_size: int
    micro_batch_size: int
    language_dp: int

    @property
    def samples_per_microbatch(self) -> int:
        return self.micro_batch_size * self.language_dp

    @property
    def n_microbatches(self) -> int:
        return self.global_batch_size // self.samples_per_microbatch

    def microbatch_indices(self, step: int, microbatch: int) -> range:
        """Global sample indices of one micro-batch, in slot order."""
        first = step * self.global_batch_size + microbatch * self.samples_per_microbatch
        return range(first, first + self.samples_per_microbatch)

    def owned(self, step: int, microbatch: int, dp: int, dp_rank: int) -> range:
        """The global sample indices a module's dp rank owns in one micro-batch."""
        lo, hi = owned_slots(self.samples_per_microbatch, dp, dp_rank)
        first = self.microbatch_indices(step, microbatch).start
        return range(first + lo, first + hi)


def owned_slots(n: int, dp: int, dp_rank: int) -> tuple[int, int]:
    """Slots [lo, hi) of an n-slot micro-batch owned by dp rank `dp_rank` of `dp`."""
    if n % dp:
        raise ValueError(f"{n} samples per micro-batch do not split over dp = {dp}")
    per = n // dp
    return dp_rank * per, (dp_rank + 1) * per


def overlaps(n: int, src_dp: int, dst_dp: int) -> list[tuple[int, int, int, int]]:
    """(src_dp_rank, dst_dp_rank, lo, hi) for every non-empty slot range owned by both sides.

    One rule for fan-in (src_dp > dst_dp), fan-out (src_dp < dst_dp) and 1:1.
    """
    out = []
    for s in range(src_dp):
        s_lo, s_hi = owned_slots(n, src_dp, s)
        for d in range(dst_dp):
            d_lo, d_hi = owned_slots(n, dst_dp, d)
            lo, hi = max(s_lo, d_lo), min(s_hi, d_hi)
            if lo < hi:
                out.append((s, d, lo, hi))
    return out
