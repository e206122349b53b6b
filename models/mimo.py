"""The MIMO composite: encoders whose tokens replace placeholder tokens in the LM's input.

This single-process composite is the reference the distributed trainer must reproduce; the
trainer itself places the same encoder and LM modules on separate meshes and joins them with the
bridge, using `merge_embeddings` on the LM's first stage.

Shape legend: B batch, S sequence, D LM dim, V vocab size, N placeholder rows of one modality.
"""

from torch import Tensor, nn

from .language.model import HybridLM

__all__ = ["MimoModel", "merge_embeddings"]


def merge_embeddings(h_BSD: Tensor, tokens_BS: Tensor, embeds: dict[int, Tensor]) -> Tensor:
    """Out-of-place: rows of embeds[id] (emb_ND) replace h at positions where tokens == id.

    Rows fill positions in row-major order (batch, then sequence), i.e. sample order then
    position order, which is how the encoder concatenates its images. Gradients flow to both
    h_BSD (non-placeholder positions) and every emb_ND.
    """
    for placeholder_id, emb_ND in embeds.items():
        mask_BS = tokens_BS == placeholder_id
        n_positions = int(mask_BS.sum())
        if n_positions != emb_ND.shape[0]:
            raise ValueError(
                f"placeholder id {placeholder_id}: {n_positions} placeholder positions in the "
                f"tokens but {emb_ND.shape[0]} embedding rows"
            )
        h_BSD = h_BSD.masked_scatter(mask_BS.unsqueeze(-1), emb_ND.to(h_BSD.dtype))
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
