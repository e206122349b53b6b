"""The language model's pipeline stages: ordinary modules composed from the model's parts.

A stage holds the parts of the hybrid language model it runs under the model's own names
(`tok_embeddings`, `layers.<global index>`, `norm`, `output`), so parameter names, and with them
the seed-per-name init and the checkpoint keys, are the whole model's on every stage. Its forward
reads one way: the first stage embeds the tokens, takes the micro-batch's encoder embeddings
(`EncoderEmbeddings`: over the bridge, or from a colocated encoder) and merges them at the
placeholders (then, under tensor parallelism, keeps its sequence shard); every stage runs its
blocks; the last stage applies the final norm and ends in the loss: given labels, the summed
fused head + cross-entropy (the logits never exist whole), else the logits for a cross-entropy
outside (loss-parallel under TP, or `training.loss = "logits"`). Without pipelining the one
stage is both first and last.

Legend: B samples of a micro-batch, S sequence, D hidden, V vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh

from titan_mimo.models import merge_embeddings
from titan_mimo.models.language.model import BlockStack, HybridLM, fused_loss_sum
from titan_mimo.models.language.parallelize import scatter_sequence

if TYPE_CHECKING:
    from titan_mimo.embeddings import EncoderEmbeddings


class LanguageStage(nn.Module):
    """Stage `stage_id` of `n_stages`: the blocks of `layers` (global indices) of `model`, with
    the embedding on the first stage and the final norm and head on the last."""

    def __init__(self, model: HybridLM, layers: range, *, is_first: bool, is_last: bool,
                 embeddings: EncoderEmbeddings | None = None, tp_mesh: DeviceMesh | None = None):
        super().__init__()
        self.tok_embeddings = model.tok_embeddings if is_first else None
        self.layers = BlockStack({key: block for key, block in model.layers.items() if int(key) in layers})
        self.norm = model.norm if is_last else None
        self.output = model.output if is_last else None
        # Plain attributes, not submodules: the encoders' parameters are theirs, not the stage's.
        self.embeddings = embeddings
        """First stage: the encoders' embeddings of each micro-batch (None: text only)."""
        self.tp_mesh = tp_mesh
        """First stage under tensor parallelism: the merged hidden states are split over it."""

    def forward(self, x: Tensor, mb_B: Tensor | None = None, *, labels_BS: Tensor | None = None) -> Tensor:
        """First stage: x = tokens [B, S] and `mb_B` their micro-batch ids; later stages:
        x = hidden states [B, S, D] from the previous stage. Returns hidden states, or on the last
        stage the summed float32 loss of `labels_BS` (fused), or logits [B, S, V] without labels.

        `labels_BS` is keyword-only because torch.distributed.pipelining hands a rank's keyword
        inputs to each stage it holds: a stage that is not last ignores them."""
        h_BSD = self.layers(self._embed(x, mb_B) if self.tok_embeddings is not None else x)
        if self.norm is None:
            return h_BSD
        h_BSD = self.norm(h_BSD)
        if labels_BS is not None:
            return fused_loss_sum(h_BSD, self.output, labels_BS)
        return self.output(h_BSD)

    def _embed(self, tokens_BS: Tensor, mb_B: Tensor | None) -> Tensor:
        h_BSD = self.tok_embeddings(tokens_BS)
        if self.embeddings is not None:
            h_BSD = merge_embeddings(h_BSD, tokens_BS, self.embeddings(tokens_BS, mb_B))
        return scatter_sequence(h_BSD, self.tp_mesh) if self.tp_mesh is not None else h_BSD
