"""The data's core types, shared by every dataset (mock and real), the loader, the schedule and
the step: one `Sample`, a `Batch` of samples, a rank's `StepData` (its batches of one step) and
`IGNORE_INDEX`, the label of positions without loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label of positions with nothing to predict (image placeholders, padding), as in F.cross_entropy."""


@dataclass(kw_only=True)
class Sample:
    tokens: Tensor
    """[S] int64 token ids."""
    labels: Tensor
    """[S] int64 next-token targets, -100 where nothing is predicted."""
    images: dict[str, list[Tensor]]
    """Per encoder name: the sample's images, each [C, H, W] float32."""
    skipped: int = 0
    """Records rejected (bad or too long) before this sample's record was found (real data)."""
    blank_images: int = 0
    """Images whose pixels failed to decode and were replaced by blanks (real data)."""


@dataclass(kw_only=True)
class Batch:
    tokens: Tensor
    """[B, S]"""
    labels: Tensor
    """[B, S]"""
    images: dict[str, list[Tensor]]
    """Per encoder: images of all samples in slot order."""
    skipped: int = 0
    """Sum of the samples' `skipped`."""
    blank_images: int = 0
    """Sum of the samples' `blank_images`."""

    @classmethod
    def of(cls, samples: list[Sample], encoders: list[str]) -> Batch:
        """The samples stacked in order; each encoder's images concatenated in sample order."""
        return cls(tokens=torch.stack([s.tokens for s in samples]),
                   labels=torch.stack([s.labels for s in samples]),
                   images={name: [im for s in samples for im in s.images[name]] for name in encoders},
                   skipped=sum(s.skipped for s in samples),
                   blank_images=sum(s.blank_images for s in samples))


@dataclass(kw_only=True)
class StepData:
    """What this rank loaded for one step: per micro-batch, its own samples only."""

    text: list[Batch] = field(default_factory=list)
    """Language ranks: tokens/labels of this rank's language dp slots, per micro-batch."""
    images: dict[str, list[Batch]] = field(default_factory=dict)
    """Encoder ranks: per encoder, a batch of this rank's encoder dp slots, per micro-batch."""
