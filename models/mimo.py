"""The MIMO composite: encoders whose tokens replace placeholder tokens in the LM's input.

This single-process composite is the reference the distributed trainer must reproduce; the
trainer itself places the same encoder and LM modules on separate meshes and joins them with the
bridge, using `merge_embeddings` on the LM's first stage.

Shape legend: B batch, S sequence, T = B*S flattened positions, D LM dim, V vocab size,
N placeholder rows of one modality.
"""

import torch
from torch import Tensor, nn

from .language.model import HybridLM

__all__ = ["MimoModel", "merge_embeddings"]


def merge_embeddings(h_BSD: Tensor, tokens_BS: Tensor, embeds: dict[int, Tensor]) -> Tensor:
    """Out-of-place: rows of embeds[id] (emb_ND) replace h at positions where tokens == id.

    Rows fill positions in row-major order (batch, then sequence), i.e. sample order then
    position order, which is how the encoder concatenates its images. Gradients flow to both
    h_BSD (non-placeholder positions) and every emb_ND, also one with no rows (N = 0): its
    encoder still runs backward, which FSDP's gradient reduce-scatter on its peers waits for.

    Free of device->host synchronisation: this runs between the encoder's forward and the
    language model's, and a sync here makes the host wait for the encoder before it can queue
    the language model's kernels. So no `masked_scatter` (its backward is a `masked_select`, whose
    output size is data-dependent) and, off the CPU, the count check is a device-side assert.
    Each placeholder's position is found on the device from N, known on the host: the k-th
    placeholder sits at the first position where the running placeholder count reaches k. The
    result and both gradients are copies of the same elements masked_scatter's are, bitwise.
    """
    for placeholder_id, emb_ND in embeds.items():
        mask_T = (tokens_BS == placeholder_id).flatten()
        n_rows = emb_ND.shape[0]
        if mask_T.device.type == "cpu":
            n_positions = int(mask_T.sum())
            if n_positions != n_rows:
                raise ValueError(
                    f"placeholder id {placeholder_id}: {n_positions} placeholder positions in the "
                    f"tokens but {n_rows} embedding rows"
                )
        else:
            torch._assert_async(mask_T.sum() == n_rows,
                                f"placeholder id {placeholder_id}: the number of placeholder positions "
                                f"in the tokens is not the {n_rows} embedding rows")
        k_N = torch.arange(1, n_rows + 1, device=mask_T.device)
        # Clamped so a count mismatch on an accelerator meets the assert above, not an
        # out-of-bounds index.
        pos_N = torch.searchsorted(mask_T.cumsum(0), k_N).clamp_(max=mask_T.numel() - 1)
        h_TD = h_BSD.reshape(-1, h_BSD.shape[-1]).index_copy(0, pos_N, emb_ND.to(h_BSD.dtype))
        h_BSD = h_TD.view(h_BSD.shape)
    return h_BSD


class MimoModel(nn.Module):
    """encoders (name → VisionModule) + language (HybridLM) + placeholder_ids (name → token id)."""

    def __init__(
        self, encoders: dict[str, nn.Module], language: HybridLM, placeholder_ids: dict[str, int]
    ):
        super().__init__()
        if set(encoders) != set(placeholder_ids):
            raise ValueError(
                f"encoders {sorted(encoders)} and placeholder_ids {sorted(placeholder_ids)} "
                "must name the same modalities"
            )
        ids = list(placeholder_ids.values())
        if len(set(ids)) != len(ids):
            raise ValueError(f"placeholder_ids {placeholder_ids} must be distinct token ids")
        self.encoders = nn.ModuleDict(encoders)
        self.language = language
        self.placeholder_ids = dict(placeholder_ids)

    def forward(self, tokens_BS: Tensor, images: dict[str, list[Tensor]]) -> Tensor:
        """Tokens with placeholders [B, S] + each modality's inputs in sample order → logits."""
        unknown = sorted(set(images) - set(self.encoders))
        if unknown:
            raise ValueError(
                f"inputs for unknown modalities {unknown}; have {sorted(self.encoders)}"
            )
        h_BSD = self.language.embed(tokens_BS)
        embeds = {
            self.placeholder_ids[name]: encoder(images.get(name, []))
            for name, encoder in self.encoders.items()
        }
        h_BSD = merge_embeddings(h_BSD, tokens_BS, embeds)
        return self.language.forward_hidden(h_BSD)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
