"""Causal grouped-query attention, with rotary position embeddings or none (Nemotron-H).

Shape legend:
    B batch, S sequence, D model dim, H query heads, K key/value heads, E head dim, F E/2.
"""

import torch
from torch import Tensor, nn

from ..attention_kernels import attention_function
from ..common import fused_linears
from .args import HybridLMArgs

__all__ = ["Attention", "apply_rope", "rope_cos_sin"]


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device: torch.device):
    """cos_SF, sin_SF (float32) of the rotary angles for positions 0..seq_len-1.

    Computed per call instead of cached in a buffer: a buffer would be left uninitialised by the
    meta-device build + to_empty that the trainer uses, and the cost is negligible next to attention.
    """
    inv_freq_F = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    )
    angles_SF = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq_F)
    return torch.cos(angles_SF), torch.sin(angles_SF)


def apply_rope(x_BSHE: Tensor, cos_SF: Tensor, sin_SF: Tensor) -> Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1), the convention of Meta's Llama and torchtitan."""
    x_BSHF2 = x_BSHE.float().view(*x_BSHE.shape[:-1], -1, 2)
    x0, x1 = x_BSHF2.unbind(-1)
    cos, sin = cos_SF[None, :, None, :], sin_SF[None, :, None, :]
    out_BSHF2 = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out_BSHF2.flatten(-2).type_as(x_BSHE)


class Attention(nn.Module):
    """Causal GQA: wq/wk/wv/wo without bias, RoPE (unless position_embedding="none"), then `args.attention_backend`'s kernel."""

    def __init__(self, args: HybridLMArgs):
        super().__init__()
        self.head_dim = args.head_dim
        self.rope_theta = args.rope_theta if args.position_embedding == "rope" else None
        # Resolved at build time so a missing optional kernel fails before any training work.
        self.attend = attention_function(args.attention_backend)
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x_BSD: Tensor) -> Tensor:
        q, k, v = fused_linears(x_BSD, [self.wq, self.wk, self.wv])
        # b, s and head counts come from the projections, not from x or args: under sequence
        # parallelism x holds a slice of the sequence, under tensor parallelism q a slice of heads.
        b, s = q.shape[:2]
        q_BSHE = q.view(b, s, -1, self.head_dim)
        k_BSKE = k.view(b, s, -1, self.head_dim)
        v_BSKE = v.view(b, s, -1, self.head_dim)
        if self.rope_theta is not None:
            cos_SF, sin_SF = rope_cos_sin(s, self.head_dim, self.rope_theta, q.device)
            q_BSHE = apply_rope(q_BSHE, cos_SF, sin_SF)
            k_BSKE = apply_rope(k_BSKE, cos_SF, sin_SF)
        o_BSHE = self.attend(q_BSHE, k_BSKE, v_BSKE, is_causal=True)
        return self.wo(o_BSHE.reshape(b, s, -1))

    @staticmethod
    def forward_flops_per_token(args: HybridLMArgs, seq_len: int) -> int:
        """Forward FLOPs per token: the four projections plus QKᵀ and AV.

        The score and value matmuls count the full S×S square (4·H·E·S per token forward) although
        half is masked: torchtitan's MFU counts causal attention that way (12·H·E·S per token for
        training), and matching it keeps our MFU comparable to theirs.
        """
        q_width, kv_width = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
        projections = 2 * args.dim * (2 * q_width + 2 * kv_width)
        return projections + 4 * q_width * seq_len
