"""Seeded mock image-caption data with a task only the vision path can solve.

Each image is a grid of cells, one cell per image token the encoder emits (a cell is
patch_size * pixel_shuffle pixels square). Every cell shows one of `num_values` colours plus
noise, and the caption that follows the image's placeholder tokens names the cells' values in
row-major order, one token each. Without information from the image the caption tokens are
uniform over `num_values` choices (loss ln(num_values)); with it they are predictable, so the
loss falls far below that only when the vision path works. Text-only samples carry a counting
sequence (learnable from text alone).

Sample layout: [placeholder x n_1][caption_1] ... [placeholder x n_k][caption_k][pad ...].
The text pool excludes the pad id and every placeholder id; labels are the next token, and -100
where the next token is a placeholder or pad (nothing to predict there).

Everything about sample i comes from a generator seeded by (seed, split, i), so any rank can
materialise exactly the part of a sample it needs (images on encoder ranks, tokens on the first
language stage, labels on the last) and all ranks agree.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from titan_mimo.data.batch import IGNORE_INDEX, Batch, Sample

SPLITS = {"train": 0, "validation": 1}


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """What the data needs to know of one encoder module."""

    name: str
    placeholder_id: int
    cell: int
    """Pixels per side of the image area behind one image token (patch * pixel_shuffle)."""
    channels: int = 3


def _generator(*keys: int | str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(zlib.crc32(":".join(map(str, keys)).encode()))
    return g


class MockImageCaption:
    def __init__(self, *, seed: int, seq_len: int, vocab_size: int, pad_id: int,
                 encoders: list[EncoderSpec], image_sizes: list[list[int]], num_values: int,
                 text_only_fraction: float = 0.0) -> None:
        self.seed, self.seq_len, self.pad_id = seed, seq_len, pad_id
        self.encoders, self.image_sizes = encoders, [tuple(s) for s in image_sizes]
        self.num_values, self.text_only_fraction = num_values, text_only_fraction
        reserved = {pad_id} | {e.placeholder_id for e in encoders}
        bad = [i for i in reserved if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"data: token ids {bad} (pad/placeholders) are outside the vocabulary of {vocab_size}")
        self.pool = torch.tensor([i for i in range(vocab_size) if i not in reserved])
        if len(self.pool) < num_values * len(encoders):
            raise ValueError(
                f"data.num_values = {num_values} x {len(encoders)} encoders needs that many text "
                f"ids but the vocabulary leaves {len(self.pool)}"
            )
        for e in encoders:
            for h, w in self.image_sizes:
                if h % e.cell or w % e.cell:
                    raise ValueError(
                        f"data.image_sizes: [{h}, {w}] is not a multiple of {e.cell} pixels "
                        f"(patch_size * pixel_shuffle of modules.{e.name})"
                    )
        longest = sum(2 * max(h * w // e.cell**2 for h, w in self.image_sizes) for e in encoders)
        if longest > seq_len:
            raise ValueError(
                f"training.seq_len = {seq_len} cannot hold the largest sample: {longest} tokens "
                f"(placeholders + captions for image_sizes {image_sizes}); raise seq_len or "
                "shrink the images"
            )
        g = _generator(seed, "colours")
        self.colours = {e.name: torch.rand(num_values, e.channels, generator=g) for e in encoders}

    def sample(self, index: int, split: str = "train", with_images: bool = True) -> Sample:
        """Sample `index`; `with_images=False` skips drawing pixels (text ranks need none) and
        leaves `images` empty, without changing anything else about the sample."""
        g = _generator(self.seed, SPLITS[split], index)
        # Drawn in any case, so the stream of the other draws does not depend on the encoders;
        # without encoders (a language model alone) every sample is text.
        text_only = bool(torch.rand((), generator=g) < self.text_only_fraction) or not self.encoders
        pieces: list[Tensor] = []
        images: dict[str, list[Tensor]] = {e.name: [] for e in self.encoders}
        if text_only:
            start = int(torch.randint(len(self.pool), (), generator=g))
            length = min(self.seq_len, 8)
            pieces.append(self.pool[(start + torch.arange(length)) % len(self.pool)])
        for k, e in enumerate(self.encoders):
            if text_only:
                break
            h, w = self.image_sizes[int(torch.randint(len(self.image_sizes), (), generator=g))]
            gh, gw = h // e.cell, w // e.cell
            values = torch.randint(self.num_values, (gh, gw), generator=g)
            if with_images:
                # Noise has its own generator so skipping it leaves the text draws unchanged.
                noise_g = _generator(self.seed, SPLITS[split], index, "noise", k)
                cells = self.colours[e.name][values]  # [gh, gw, C]
                img = cells.permute(2, 0, 1).repeat_interleave(e.cell, 1).repeat_interleave(e.cell, 2)
                images[e.name].append(img + 0.05 * torch.randn(img.shape, generator=noise_g))
            pieces.append(torch.full((gh * gw,), e.placeholder_id))
            pieces.append(self.pool[values.flatten() + k * self.num_values])
        text = torch.cat(pieces)
        tokens = torch.full((self.seq_len,), self.pad_id)
        tokens[: len(text)] = text
        labels = torch.full((self.seq_len,), IGNORE_INDEX)
        nxt = tokens[1:]
        predictable = nxt != self.pad_id
        for e in self.encoders:
            predictable &= nxt != e.placeholder_id
        labels[:-1] = torch.where(predictable, nxt, IGNORE_INDEX)
        return Sample(tokens=tokens, labels=labels, images=images)

    def batch(self, indices: range | list[int], split: str = "train", with_images: bool = True) -> Batch:
        samples = [self.sample(i, split, with_images) for i in indices]
        return Batch.of(samples, [e.name for e in self.encoders])
