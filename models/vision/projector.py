"""Pixel-shuffle projector: merges s×s neighbouring patches, then an MLP into the LM's width.

Shape legend:
    B images, h/w patch-grid rows/columns, D encoder dim, O output (LM) dim, F projector hidden.
"""

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Projector", "SquaredReLU", "pixel_shuffle"]


def pixel_shuffle(x_BhwD: Tensor, factor: int) -> Tensor:
    """[B, h, w, D] → [B, h/s, w/s, s·s·D]; each output token holds an s×s block of patches.

    Channel order of a merged token: (row in block, column in block, D).
    """
    b, h, w, d = x_BhwD.shape
    if h % factor or w % factor:
        raise ValueError(
            f"pixel_shuffle: patch grid {h}x{w} is not divisible by pixel_shuffle={factor}"
        )
    x = x_BhwD.view(b, h // factor, factor, w // factor, factor, d)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h // factor, w // factor, factor * factor * d)


class SquaredReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x).square()


class Projector(nn.Module):
    """pixel_shuffle → norm → Linear → activation → Linear(out_dim).

    Defaults: LayerNorm, GELU, biased linears. The Nemotron-H Omni projector is `norm="rmsnorm"`,
    `act="relu2"`, `bias=False`."""

    def __init__(self, dim: int, factor: int, hidden: int, out_dim: int, eps: float, *,
                 norm: str = "layernorm", act: str = "gelu", bias: bool = True):
        super().__init__()
        self.factor = factor
        merged = dim * factor * factor
        self.norm = nn.RMSNorm(merged, eps=eps) if norm == "rmsnorm" else nn.LayerNorm(merged, eps=eps)
        self.w1 = nn.Linear(merged, hidden, bias=bias)
        self.act = SquaredReLU() if act == "relu2" else nn.GELU()
        self.w2 = nn.Linear(hidden, out_dim, bias=bias)

    def forward(self, x_BPD: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """Patches in row-major grid order [B, h·w, D] → tokens [B, (h/s)·(w/s), O]."""
        b, _, d = x_BPD.shape
        h, w = grid_hw
        x = pixel_shuffle(x_BPD.view(b, h, w, d), self.factor).flatten(1, 2)
        return self.w2(self.act(self.w1(self.norm(x))))

    def forward_flops_per_token(self) -> int:
        """Forward FLOPs per output token (the two linears)."""
        return 2 * (self.w1.weight.numel() + self.w2.weight.numel())
