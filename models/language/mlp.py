"""Squared-ReLU MLP (Nemotron-H): w2(relu(w1(x))²), no bias.

Shape legend: B batch, S sequence, D model dim, F hidden width.
"""

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x_BSD: Tensor) -> Tensor:
        h_BSF = F.relu(self.w1(x_BSD)).square()
        return self.w2(h_BSF)

    @staticmethod
    def forward_flops_per_token(dim: int, hidden: int) -> int:
        return 2 * dim * hidden * 2
