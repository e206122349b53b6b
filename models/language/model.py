"""Hybrid language model: a stack of pre-norm residual Mamba2 / attention / MLP blocks.

Layers live in a `BlockStack` (an nn.ModuleDict that runs its blocks in order) keyed by the
*global* layer index ("0", "1", ...). A pipeline stage (titan_mimo/stages.py) takes the parts it
runs under these names, so parameter names (and thus init seeds and checkpoint keys) stay global
on every stage.

Shape legend: B batch, S sequence, D model dim, V vocab size.
"""

from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from .args import HybridLMArgs
from .attention import Attention
from .loss import linear_cross_entropy_sum
from .mamba2 import Mamba2Mixer
from .mlp import MLP
from .moe import MoE

__all__ = ["AttentionBlock", "BlockStack", "HybridLM", "MLPBlock", "MambaBlock", "MoEBlock", "build_block", "fused_loss_sum"]


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


class BlockStack(nn.ModuleDict):
    """Blocks keyed by global layer index, run in insertion order: one module whose forward is
    the whole stack [B, S, D] -> [B, S, D] (what a trainer may capture as one CUDA graph), with
    the parameter names of a plain ModuleDict."""

    def forward(self, h_BSD: Tensor) -> Tensor:
        for layer in self.values():
            h_BSD = layer(h_BSD)
        return h_BSD


class HybridLM(nn.Module):
    """Token embedding → blocks in layer_pattern order → RMSNorm → untied output head."""

    def __init__(self, args: HybridLMArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = BlockStack(
            {str(i): build_block(kind, args) for i, kind in enumerate(args.layer_pattern)}
        )
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)

    def embed(self, tokens_BS: Tensor) -> Tensor:
        return self.tok_embeddings(tokens_BS)

    def forward_hidden(self, h_BSD: Tensor) -> Tensor:
        """Run this model's layers (in global index order), then norm and head."""
        return self.output(self.norm(self.layers(h_BSD)))

    def forward(self, tokens_BS: Tensor, labels: Tensor | None = None) -> Tensor:
        """Tokens [B, S] → logits [B, S, V].

        With `labels` [B, S]: the summed float32 cross-entropy of the labelled positions instead
        of the logits, through `fused_loss_sum`, which never holds the whole [B, S, V] logits
        (the memory that decides the batch size of a big-vocabulary model).
        """
        if labels is None:
            return self.forward_hidden(self.embed(tokens_BS))
        h_BSD = self.layers(self.embed(tokens_BS))
        return fused_loss_sum(self.norm(h_BSD), self.output, labels)

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


def fused_loss_sum(h_BSD: Tensor, output: nn.Linear, labels_BS: Tensor) -> Tensor:
    """Summed float32 cross-entropy of final-norm hidden states through the output head,
    chunked over tokens (`linear_cross_entropy_sum`): the logits never exist whole."""
    if isinstance(output.weight, DTensor):
        raise ValueError("the fused loss does not support a tensor-parallel output head; compute the "
                         "loss from the logits (training.loss = \"logits\")")
    return linear_cross_entropy_sum(h_BSD.flatten(0, 1), output.weight, labels_BS.flatten())
