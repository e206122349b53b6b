"""Hybrid language model: a stack of pre-norm residual Mamba2 / attention / MLP blocks.

Layers live in an nn.ModuleDict keyed by the *global* layer index ("0", "1", ...). A pipeline
stage deletes the entries it does not own and sets tok_embeddings / norm / output to None, so
parameter names (and thus init seeds and checkpoint keys) stay global on every stage.

Shape legend: B batch, S sequence, D model dim, V vocab size.
"""

from collections.abc import Callable

from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from .args import HybridLMArgs
from .attention import Attention
from .loss import linear_cross_entropy_sum
from .mamba2 import Mamba2Mixer
from .mlp import MLP
from .moe import MoE

__all__ = ["AttentionBlock", "HybridLM", "MLPBlock", "MambaBlock", "MoEBlock", "build_block"]


class MambaBlock(nn.Module):
    def __init__(self, args: HybridLMArgs):
        super().__init__()
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.mixer = Mamba2Mixer(args)

    def forward(self, x_BSD: Tensor) -> Tensor:
        return x_BSD + self.mixer(self.norm(x_BSD))

    @staticmethod
    def forward_flops_per_token(args: HybridLMArgs, seq_len: int) -> int:
        return Mamba2Mixer.forward_flops_per_token(args, seq_len)


class AttentionBlock(nn.Module):
    def __init__(self, args: HybridLMArgs):
        super().__init__()
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.attn = Attention(args)

    def forward(self, x_BSD: Tensor) -> Tensor:
        return x_BSD + self.attn(self.norm(x_BSD))

    @staticmethod
    def forward_flops_per_token(args: HybridLMArgs, seq_len: int) -> int:
        return Attention.forward_flops_per_token(args, seq_len)


class MLPBlock(nn.Module):
    def __init__(self, args: HybridLMArgs):
        super().__init__()
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.mlp = MLP(args.dim, args.mlp_hidden)

    def forward(self, x_BSD: Tensor) -> Tensor:
        return x_BSD + self.mlp(self.norm(x_BSD))

    @staticmethod
    def forward_flops_per_token(args: HybridLMArgs, seq_len: int) -> int:
        return MLP.forward_flops_per_token(args.dim, args.mlp_hidden)


class MoEBlock(nn.Module):
    def __init__(self, args: HybridLMArgs):
        super().__init__()
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.moe = MoE(args)

    def forward(self, x_BSD: Tensor) -> Tensor:
        return x_BSD + self.moe(self.norm(x_BSD))

    @staticmethod
    def forward_flops_per_token(args: HybridLMArgs, seq_len: int) -> int:
        return MoE.forward_flops_per_token(args)


_BLOCKS: dict[str, type[nn.Module]] = {"M": MambaBlock, "*": AttentionBlock, "-": MLPBlock, "E": MoEBlock}


def build_block(kind: str, args: HybridLMArgs) -> nn.Module:
    """The block for one layer_pattern character."""
    return _BLOCKS[kind](args)


class HybridLM(nn.Module):
    """Token embedding → blocks in layer_pattern order → RMSNorm → untied output head."""

    def __init__(self, args: HybridLMArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleDict(
            {str(i): build_block(kind, args) for i, kind in enumerate(args.layer_pattern)}
        )
        self.norm: nn.RMSNorm | None = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.output: nn.Linear | None = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.input_merge: Callable[..., Tensor] | None = None
        self.head_in_loss = False
        """True: forward stops after the final norm and returns hidden states, not logits; the
        caller applies the head inside its loss (`loss_sum_from_hidden`), as a pipeline's last
        stage does for the chunked loss (its output crosses the schedule, its loss does not)."""

    def embed(self, tokens_BS: Tensor) -> Tensor:
        if self.tok_embeddings is None:
            raise ValueError("embed() called on a pipeline stage without tok_embeddings")
        return self.tok_embeddings(tokens_BS)

    def forward_hidden(self, h_BSD: Tensor) -> Tensor:
        """Run this model's layers (in global index order), then norm and head where present."""
        for layer in self.layers.values():
            h_BSD = layer(h_BSD)
        if self.norm is not None:
            h_BSD = self.norm(h_BSD)
        if self.output is not None and not self.head_in_loss:
            return self.output(h_BSD)
        return h_BSD

    def loss_sum_from_hidden(self, h_BSD: Tensor, labels_BS: Tensor) -> Tensor:
        """Summed float32 cross-entropy of final-norm hidden states through the output head,
        chunked over tokens (`linear_cross_entropy_sum`): the logits never exist whole."""
        if self.output is None:
            raise ValueError("loss_sum_from_hidden needs the output head (the last pipeline stage)")
        if isinstance(self.output.weight, DTensor):
            raise ValueError("the chunked loss does not support a tensor-parallel output head")
        return linear_cross_entropy_sum(h_BSD.flatten(0, 1), self.output.weight, labels_BS.flatten())

    def forward(self, x: Tensor, *merge_args: Tensor, labels: Tensor | None = None) -> Tensor:
        """Tokens [B, S] → logits [B, S, V] on a full model; on a stage, hidden states in/out.

        With `labels` [B, S] (full model only): the summed float32 cross-entropy of the labelled
        positions instead of the logits, through `linear_cross_entropy_sum`, which never holds the
        whole [B, S, V] logits (the memory that decides the batch size of a big-vocabulary model).

        If `input_merge` is set (a plain callable, not a submodule), the embedded tokens pass
        through `input_merge(h_BSD, tokens_BS, *merge_args)` before the layers: that is where a
        multimodal composite scatters encoder embeddings into the placeholder positions, inside
        this module's forward so parallel wrappers (FSDP's root hooks) see one forward call.
        """
        if labels is not None:
            return self._loss_sum(x, merge_args, labels)
        if self.tok_embeddings is None:
            return self.forward_hidden(x)
        return self.forward_hidden(self._embed_merged(x, merge_args))

    def _embed_merged(self, tokens_BS: Tensor, merge_args: tuple[Tensor, ...]) -> Tensor:
        h_BSD = self.embed(tokens_BS)
        if self.input_merge is not None:
            h_BSD = self.input_merge(h_BSD, tokens_BS, *merge_args)
        return h_BSD

    def _loss_sum(self, tokens_BS: Tensor, merge_args: tuple[Tensor, ...], labels_BS: Tensor) -> Tensor:
        if self.tok_embeddings is None or self.norm is None or self.output is None:
            raise ValueError("forward(labels=...) needs the full model (embedding, norm and head); "
                             "a pipeline stage returns hidden states or logits")
        if isinstance(self.output.weight, DTensor):
            raise ValueError("forward(labels=...) does not support a tensor-parallel output head; "
                             "compute the loss from the logits (forward without labels)")
        h_BSD = self._embed_merged(tokens_BS, merge_args)
        for layer in self.layers.values():
            h_BSD = layer(h_BSD)
        h_BSD = self.norm(h_BSD)
        return linear_cross_entropy_sum(h_BSD.flatten(0, 1), self.output.weight, labels_BS.flatten())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs (forward + backward = 3 × forward) per token of the layers present.

        Counts every matmul (2·m·n·k) of the blocks this module still holds, plus the output head
        if present; the embedding lookup is 0 FLOPs. Attention counts the full causal square as
        torchtitan does (see Attention.forward_flops_per_token), so an attention+MLP flavor gives
        exactly torchtitan's 6·N + 12·L·H·E·S with N the non-embedding parameters (norm weights
        aside). Mamba2's chunked-scan terms are in Mamba2Mixer.forward_flops_per_token.
        """
        # Block kinds come from the pattern, not type(layer): activation checkpointing and
        # torch.compile wrap the layers in other module types.
        forward = sum(
            _BLOCKS[self.args.layer_pattern[int(key)]].forward_flops_per_token(self.args, seq_len)
            for key in self.layers
        )
        if self.output is not None:
            forward += 2 * self.args.dim * self.args.vocab_size
        return 3 * forward
