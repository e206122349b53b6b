"""Optional GPU kernels for the Mamba-2 SSD scan, chosen by `HybridLMArgs.ssd_backend`.

"torch" is `ssd.ssd_chunked` (pure PyTorch, the reference and the CPU path). "mamba_ssm" runs
mamba-ssm's Triton SSD kernels, imported lazily when a mixer is built with it, as titan_mimo's
custom ops with a leaner backward (`ssd_mamba_ssm`; `keep_states`: the forward's chunk states are
kept instead of recomputed).
Everything that reaches into mamba-ssm (its import, its private kernels) is in `ssd_mamba_ssm`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .ssd import ssd_chunked
from .ssd_mamba_ssm import MISSING_MAMBA_SSM, import_scan, is_custom_op_scan

__all__ = ["MISSING_MAMBA_SSM", "ssd_function"]

def _mamba_ssm_scan(keep_states: bool) -> Callable[..., Tensor]:
    kernel = import_scan(keep_states)

    def ssd_mamba_ssm(x_BSHP: Tensor, dt_BSH: Tensor, A_H: Tensor, B_BSGN: Tensor,
                      C_BSGN: Tensor, chunk_size: int, D_H: Tensor | None = None) -> Tensor:
        """Same contract as `ssd_chunked` (dt already softplus'd, output in x's dtype)."""
        if not x_BSHP.is_cuda:
            raise ValueError("ssd_backend='mamba_ssm' runs on CUDA tensors only; use 'torch' on CPU")
        return kernel(x_BSHP, dt_BSH, A_H, B_BSGN, C_BSGN, chunk_size, D=D_H)

    if is_custom_op_scan(kernel):
        # torch.library custom ops: a per-block torch.compile traces the mixer as one graph.
        return ssd_mamba_ssm
    # mamba-ssm's own autograd.Function (the fallback), which Dynamo cannot trace: a per-block
    # torch.compile breaks the graph around it and compiles the parts on either side.
    return torch.compiler.disable(ssd_mamba_ssm)


def ssd_function(backend: str, keep_states: bool = False) -> Callable[..., Tensor]:
    """The scan for `backend`; raises ImportError naming the `gpu` extra if a kernel is missing.
    `keep_states` (mamba_ssm only): the backward reads the forward's chunk states."""
    if backend == "torch":
        return ssd_chunked
    if backend == "mamba_ssm":
        return _mamba_ssm_scan(keep_states)
    raise ValueError(f"ssd_backend={backend!r} is unknown; choose 'torch' or 'mamba_ssm'")
