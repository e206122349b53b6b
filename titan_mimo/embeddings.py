"""The encoders' side of the language model's input: each encoder's role on this rank
(`EncoderRole`), running an encoder on a micro-batch's images (`encode`), and what the language
model's first stage takes for each micro-batch (`EncoderEmbeddings`): the encoders' embeddings,
received over the bridge or, colocated, computed here.

Legend: B samples of a micro-batch on this rank, S sequence, N image tokens.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from titan_mimo.bridge import Bridge
from titan_mimo.compat import assert_on_device
from titan_mimo.data.batch import StepData
from titan_mimo.models.common import to_device
from titan_mimo.timing import Timeline

if TYPE_CHECKING:
    from titan_mimo.build import BuiltModule


@dataclass(kw_only=True)
class EncoderRole:
    module: BuiltModule | None
    """The encoder, when this rank computes it (None on language ranks)."""
    frozen: bool
    placeholder_id: int
    cell: int
    """Smallest image side (patch * pixel_shuffle) for the empty-micro-batch stand-in."""
    bridge: Bridge | None
    """None when colocated (embeddings stay on this rank)."""


# The vision module returns its embeddings as a view (a flatten of the projector's output), and
# FSDP2 warns that an in-place op on such a view would skip its pre-backward hook; nothing here
# or on the bridge modifies encoder outputs in place (merges and masks are out of place).
warnings.filterwarnings("ignore", category=UserWarning,
                        message=r"FSDP2-wrapped module \(FSDPVisionModule\) returned a view tensor")


def encode(role: EncoderRole, images: list[Tensor], device: torch.device) -> Tensor:
    """Run the encoder on a micro-batch's images (slot order).

    With no images it runs on one blank cell and returns zero rows: FSDP's gradient
    reduce-scatter is a collective over the encoder's dp ranks, so every rank must run the
    forward and backward even when its samples are all text-only, or its peers would wait.
    """
    model = role.module.parts[0]
    if images:
        return model([to_device(im, device) for im in images])
    blank = torch.zeros(1, 3, role.cell, role.cell, device=device)
    return model(blank)[:0]


class EncoderEmbeddings:
    """Each micro-batch's encoder embeddings, as the language model's first stage takes them
    when its forward of that micro-batch starts: from the bridge (encoders on other ranks), or
    by running the encoder here (colocated; autograd then runs through both).

    Nothing here waits for the device, or the host would idle until the encoder's kernels ran
    before queueing the language model's. So the micro-batch comes from a host counter (the
    first stage's forwards run in micro-batch order, in the pp = 1 loop and in every pipelining
    schedule, training and eval), checked against the device's `mb_B` with a device-side
    assert; and the rows per sample are counted in the host copy of the tokens (`begin`)."""

    def __init__(self, *, roles: dict[str, EncoderRole], language: str, device: torch.device,
                 timeline: Timeline, zero_embeddings: bool = False):
        self.roles, self.language, self.device = roles, language, device
        self.timeline = timeline
        """Spans of a recorded step: bridge receives, and colocated encoders' forwards."""
        self.zero_embeddings = zero_embeddings
        """The ablation `training.zero_encoder_embeddings`: merge zeros where the images go."""
        self._data = StepData()
        self._next_mb = 0

    def begin(self, data: StepData) -> None:
        """A run over `data` (this rank's step data) starts."""
        self._data, self._next_mb = data, 0

    def __call__(self, tokens_BS: Tensor, mb_B: Tensor) -> dict[int, Tensor]:
        """placeholder id -> [N, D] embeddings of the next micro-batch (`tokens_BS`, its ids `mb_B`)."""
        mb = self._next_mb
        self._next_mb += 1
        host_tokens_BS = self._data.text[mb].tokens
        if host_tokens_BS.shape != tokens_BS.shape:
            raise RuntimeError(f"micro-batch {mb}: the stage got tokens of shape {tuple(tokens_BS.shape)} "
                               f"but the step's data holds {tuple(host_tokens_BS.shape)}")
        is_expected_mb = (mb_B == mb).all()
        if mb_B.device.type == "cpu":
            if not is_expected_mb:
                raise RuntimeError(f"the first stage ran micro-batch {mb_B.tolist()} as its forward "
                                   f"number {mb}; the merge assumes micro-batch order")
        else:
            assert_on_device(is_expected_mb, f"the first stage's forward number {mb} ran another "
                                             "micro-batch; the merge assumes micro-batch order")
        embeds = {}
        for name, role in self.roles.items():
            if role.bridge is None:  # colocated: encode this rank's own samples here
                with self.timeline.span("forward", name, mb=mb):
                    emb = encode(role, self._data.images[name][mb].images[name], self.device)
                if role.frozen:
                    emb = emb.detach()
            else:
                rows = (host_tokens_BS == role.placeholder_id).sum(1).tolist()
                with self.timeline.span("bridge_wait", name, mb=mb, what="embeddings"):
                    emb = role.bridge.recv_embeddings(rows, requires_grad=not role.frozen)
            # `* 0`, not zeros_like: the ablation keeps the graph, so the bridge still sends a
            # (zero) gradient back and non-colocated encoder ranks do not wait for it forever.
            embeds[role.placeholder_id] = emb * 0 if self.zero_embeddings else emb
        return embeds
