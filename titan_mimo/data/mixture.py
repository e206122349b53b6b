"""Weighted mixing of several datasets as a pure function of (seed, sample index).

The stream is cut into blocks of `BLOCK` samples. In every block dataset d fills exactly c_d
slots (its weight's share, largest-remainder rounding), arranged by a permutation seeded by
(seed, block); dataset d's k-th slot overall reads position k of d's own stream, which walks a
fresh seeded permutation of d's records every epoch. So any sample index maps to a record in
O(1) (plus a cached permutation), with no dependence on which rank asks or what was read
before: every placement sees the same stream, and resuming needs nothing but the step.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import torch

BLOCK = 1000
"""Samples per mixing block: the weights hold exactly over every block of this many samples."""


def seeded_generator(*keys: int | str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(zlib.crc32(":".join(map(str, keys)).encode()))
    return g


def block_counts(weights: list[float], block: int = BLOCK) -> list[int]:
    """Slots per block for each dataset: the weights' shares of `block`, largest remainder."""
    total = sum(weights)
    exact = [w / total * block for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda d: (counts[d] - exact[d], d))
    for d in by_remainder[: block - sum(counts)]:
        counts[d] += 1
    return counts


class Mixture:
    def __init__(self, sizes: list[int], weights: list[float], seed: int, key: str,
                 shuffle: bool = True) -> None:
        if len(sizes) != len(weights):
            raise ValueError(f"{len(weights)} weights for {len(sizes)} datasets")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"data weights {weights} must be >= 0 with a positive sum")
        self.sizes, self.seed, self.key, self.shuffle = sizes, seed, key, shuffle
        self.counts = block_counts(weights)
        # Per-instance caches (the current mixing block, the current epochs' permutations).
        self._block = lru_cache(maxsize=4)(self._block_uncached)
        self._epoch = lru_cache(maxsize=8)(self._epoch_uncached)
        starved = [d for d, (w, c) in enumerate(zip(weights, self.counts)) if w > 0 and c == 0]
        if starved:
            raise ValueError(f"data weights {weights}: sources {starved} get no sample in a block of "
                             f"{BLOCK}; raise their weights above 1/{BLOCK} of the total")

    def _block_uncached(self, b: int) -> tuple[list[int], list[int]]:
        """(dataset of each slot, its occurrence number within the block) for block b."""
        slots = torch.tensor([d for d, c in enumerate(self.counts) for _ in range(c)])
        if len(self.counts) > 1:
            slots = slots[torch.randperm(BLOCK, generator=seeded_generator(self.seed, self.key, "mix", b))]
        seen = [0] * len(self.counts)
        nth = []
        for d in slots.tolist():
            nth.append(seen[d])
            seen[d] += 1
        return slots.tolist(), nth

    def _epoch_uncached(self, d: int, epoch: int) -> torch.Tensor:
        n = self.sizes[d]
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=seeded_generator(self.seed, self.key, "epoch", d, epoch))

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_block", "_epoch")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._block = lru_cache(maxsize=4)(self._block_uncached)
        self._epoch = lru_cache(maxsize=8)(self._epoch_uncached)

    def locate(self, index: int) -> tuple[int, int]:
        """Sample index -> (dataset, record index in it)."""
        b, j = divmod(index, BLOCK)
        slots, nth = self._block(b)
        d = slots[j]
        k = b * self.counts[d] + nth[j]
        epoch, pos = divmod(k, self.sizes[d])
        return d, int(self._epoch(d, epoch)[pos])

    def redraw(self, index: int, attempt: int, dataset: int) -> int:
        """A replacement record of `dataset` for sample `index` after `attempt` rejections:
        uniform, seeded by (seed, index, attempt), so every rank picks the same one."""
        g = seeded_generator(self.seed, self.key, "redraw", index, attempt)
        return int(torch.randint(self.sizes[dataset], (), generator=g))
