"""torchtitan's DeepSeek-V3-style MoE layer (router with node-limited routing, token reorderer,
SwiGLU experts on `torch._grouped_mm`), checked on torchtitan 0.2.2: the peer of our MoE block in
`benchmarks/moe_layer.py`.

The trainer does not train with it: on CPU its `torch.histc` on integer expert ids fails and its
token permutation is a Triton kernel (both checked on 0.2.2), and its experts are SwiGLU while
Nemotron-H's are squared-ReLU without a gate, so titan_mimo's MoE block and expert parallelism
are its own (`models/language/moe.py`, `moe_parallel.py`).
"""

from __future__ import annotations

from torchtitan.models.moe import MoE, MoEArgs

__all__ = ["MoE", "MoEArgs", "build_peer_moe"]


def build_peer_moe(*, dim: int, hidden: int, n_experts: int, top_k: int, n_shared: int,
                   route_scale: float) -> MoE:
    """torchtitan's MoE at a Nemotron-H MoE block's widths: sigmoid router with normalised top-k
    gates, `n_shared` shared experts of width `hidden` each (one FeedForward of n_shared x hidden),
    grouped GEMM, the load-balancing bias on. Parameters are left uninitialised (`init_weights`)."""
    args = MoEArgs(num_experts=n_experts, num_shared_experts=n_shared, score_func="sigmoid",
                   route_norm=True, route_scale=route_scale, top_k=top_k, use_grouped_mm=True,
                   load_balance_coeff=1e-3)
    return MoE(args, dim=dim, hidden_dim=hidden)
