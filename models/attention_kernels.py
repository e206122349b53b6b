"""Attention kernels behind `attention_backend` (ViTArgs and HybridLMArgs), on [B, S, H, E].

"sdpa" is `F.scaled_dot_product_attention` (PyTorch picks cuDNN, FlashAttention-2, memory-
efficient or math; the reference and the CPU path). Grouped-query key/value heads are repeated
to the query heads first (query head i reads kv head i // n_rep, torchtitan's convention).

"fa4" is FlashAttention-4 (the `flash-attn-4` package, Hopper and Blackwell), behind the custom ops
of `flash_attn4.py`, which also holds everything that reaches into FA4's internals.

"te" is NVIDIA Transformer Engine's `DotProductAttention` (`transformer_engine.pytorch`, an
optional backend: `pip install transformer-engine[pytorch]`), which picks cuDNN's fused attention
or FlashAttention by its own rules (`NVTE_FUSED_ATTN`, `NVTE_FLASH_ATTN`). It takes [B, S, H, E]
("bshd") and grouped-query heads natively. One parameter-free TE module per head layout is kept
outside the model (no submodule: FQNs, state dicts and checkpoints are those of the other
backends), and runs outside `torch.compile`'s graph (`torch.compiler.disable`: a compiled block
splits around it), as TE's own kernels need no compiling.

Shape legend: B batch, S sequence, H query heads, K key/value heads, E head dim.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import flash_attn4
from .flash_attn4 import MISSING_FA4

__all__ = ["ATTENTION_BACKENDS", "MISSING_FA4", "MISSING_TE", "attention_function",
           "check_attention_backend"]

ATTENTION_BACKENDS = ("sdpa", "fa4", "te")

MISSING_TE = (
    "attention_backend='te' needs NVIDIA Transformer Engine for PyTorch (`pip install "
    "transformer-engine[pytorch]`: the `transformer_engine.pytorch` package and its CUDA "
    "extension; NVIDIA GPUs); or use attention_backend='sdpa'"
)
_TE_MODULE = "transformer_engine.pytorch"
def attend_sdpa(q_BSHE: Tensor, k_BSKE: Tensor, v_BSKE: Tensor, *, is_causal: bool) -> Tensor:
    """softmax(q kᵀ / √E) v per head, [B, S, H, E] in and out, through SDPA."""
    n_rep = q_BSHE.shape[2] // k_BSKE.shape[2]
    if n_rep > 1:
        k_BSKE = k_BSKE.repeat_interleave(n_rep, dim=2)
        v_BSKE = v_BSKE.repeat_interleave(n_rep, dim=2)
    o_BHSE = F.scaled_dot_product_attention(
        q_BSHE.transpose(1, 2), k_BSKE.transpose(1, 2), v_BSKE.transpose(1, 2), is_causal=is_causal
    )
    return o_BHSE.transpose(1, 2)


def _check_cuda_half(backend: str, q_BSHE: Tensor) -> None:
    """ValueError unless q is on CUDA in bf16/fp16, what the fa4 and te kernels take."""
    if not q_BSHE.is_cuda or q_BSHE.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"attention_backend={backend!r} runs on CUDA in bf16/fp16, got {q_BSHE.dtype} on "
            f"{q_BSHE.device}; use attention_backend='sdpa' there"
        )


def attend_fa4(q_BSHE: Tensor, k_BSKE: Tensor, v_BSKE: Tensor, *, is_causal: bool) -> Tensor:
    """softmax(q kᵀ / √E) v per head through FlashAttention-4 (CUDA, fp16/bf16)."""
    _check_cuda_half("fa4", q_BSHE)
    return flash_attn4.attend(q_BSHE, k_BSKE, v_BSKE, is_causal)


def _import_te():
    try:
        return importlib.import_module(_TE_MODULE)
    except (ImportError, OSError) as e:  # OSError: its CUDA libraries failed to load
        raise ImportError(f"{MISSING_TE} ({type(e).__name__}: {e})") from e


@functools.cache
def _te_attention(n_heads: int, n_kv_heads: int, head_dim: int, is_causal: bool) -> torch.nn.Module:
    """One TE DotProductAttention per head layout (under TP: the local heads). It holds no
    parameters; dropout 0 and the default softmax scale 1/√E, as the other backends."""
    return _import_te().DotProductAttention(
        num_attention_heads=n_heads, kv_channels=head_dim, num_gqa_groups=n_kv_heads,
        attention_dropout=0.0, qkv_format="bshd", attn_mask_type="causal" if is_causal else "no_mask")


def attend_te(q_BSHE: Tensor, k_BSKE: Tensor, v_BSKE: Tensor, *, is_causal: bool) -> Tensor:
    """softmax(q kᵀ / √E) v per head through Transformer Engine (CUDA, fp16/bf16)."""
    _check_cuda_half("te", q_BSHE)
    return _attend_te(q_BSHE, k_BSKE, v_BSKE, is_causal)


@torch.compiler.disable
def _attend_te(q_BSHE: Tensor, k_BSKE: Tensor, v_BSKE: Tensor, is_causal: bool) -> Tensor:
    b, s, h, e = q_BSHE.shape
    core = _te_attention(h, k_BSKE.shape[2], e, is_causal)
    # TE returns [B, S, H * E] (heads flattened).
    return core(q_BSHE, k_BSKE, v_BSKE).view(b, s, h, e)


def check_attention_backend(backend: str) -> None:
    """ValueError naming the choices if `backend` is not one of ATTENTION_BACKENDS (the model
    args' config check, before anything is built)."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_backend={backend!r} is unknown; choose one of {list(ATTENTION_BACKENDS)}")


def attention_function(backend: str) -> Callable[..., Tensor]:
    """The attention for `backend`; raises ImportError naming the package if a kernel is
    missing, so a model built with it fails at build time, before any training work."""
    check_attention_backend(backend)
    if backend == "fa4":
        flash_attn4.import_fa4()
        return attend_fa4
    if backend == "te":
        _import_te()
        return attend_te
    return attend_sdpa
