"""Attention kernels behind `attention_backend` (ViTArgs and HybridLMArgs), on [B, S, H, E].

"sdpa" is `F.scaled_dot_product_attention` (PyTorch picks cuDNN, FlashAttention-2, memory-
efficient or math; the reference and the CPU path). Grouped-query key/value heads are repeated
to the query heads first (query head i reads kv head i // n_rep, torchtitan's convention).

"fa4" is FlashAttention-4 (the `flash-attn-4` package, `flash_attn.cute`: CuTe-DSL kernels for
Hopper and Blackwell, compiled on first use for each shape). It takes [B, S, H, E] and grouped-
query heads natively, so no transposes and no repeated keys/values. Why it exists: at the ViT-H
head width of 80, cuDNN's fused attention runs ~355 TFLOP/s on an H100 against ~545 at width
128 (`benchmarks/attention_bench.py`); FlashAttention-4 runs width 80 as it is (with a fix of its Hopper
backward applied at import, `_fix_sm90_backward_head_dims`). The kernels
are wrapped as `torch.library` custom ops (forward, backward, fake shapes), so a per-block
`torch.compile` keeps them as opaque calls instead of tracing into CuTe DSL. The forward and
backward entry points are FlashAttention-4's private `_flash_attn_fwd` /
`_flash_attn_bwd`, the same ones PyTorch's own FA4 registration (`torch.nn.attention._fa4`)
calls; checked against flash-attn-4 4.0.0b36.

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
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ATTENTION_BACKENDS", "MISSING_FA4", "MISSING_TE", "attention_function",
           "check_attention_backend"]

ATTENTION_BACKENDS = ("sdpa", "fa4", "te")

MISSING_FA4 = (
    "attention_backend='fa4' needs FlashAttention-4 (`pip install flash-attn-4`: the "
    "`flash_attn.cute` package and NVIDIA's CUTLASS DSL; Hopper or Blackwell GPUs); "
    "or use attention_backend='sdpa'"
)
_FA4_MODULE = "flash_attn.cute.interface"
MISSING_TE = (
    "attention_backend='te' needs NVIDIA Transformer Engine for PyTorch (`pip install "
    "transformer-engine[pytorch]`: the `transformer_engine.pytorch` package and its CUDA "
    "extension; NVIDIA GPUs); or use attention_backend='sdpa'"
)
_TE_MODULE = "transformer_engine.pytorch"
_fa4_head_dim_multiple = 32
"""Head dims go to FA4 zero-padded to a multiple of this: 8 (its alignment) once a fix of its
Hopper backward applied (`_fix_sm90_backward_head_dims`), else 32 (see `_attend_fa4_padded`)."""


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


def _import_fa4():
    try:
        fa4 = importlib.import_module(_FA4_MODULE)
    except ImportError as e:
        raise ImportError(f"{MISSING_FA4} (importing {_FA4_MODULE} failed: {e})") from e
    _fix_sm90_backward_head_dims(fa4)
    return fa4


def _fix_sm90_backward_head_dims(fa4) -> None:
    """Once per imported FA4 module: the read-back fix where it applies (the backward's GEMMs
    at the real head dim), else the round-up fix, else `_attend_fa4_padded` pads."""
    global _fa4_head_dim_multiple
    # The fa4 ops import the module on every call; reading sources is no work for a hot path.
    if getattr(fa4, "_titan_mimo_checked", False):
        return
    fa4._titan_mimo_checked = True
    if _fix_sm90_backward_dq_read_back(fa4):
        _fa4_head_dim_multiple = 8
    else:
        _fix_sm90_backward_head_dim_rounding(fa4)


_KERNEL_TILE_LINE = "hdim_multiple_of = 64 if dKV_swapAB else 16"


def _fix_sm90_backward_dq_read_back(fa4) -> bool:
    """The faster fix of FA4's wrong dq at head dims that are not multiples of 32 (below): the
    kernel keeps its tile (a multiple of 16: 80 for ViT-H), and the postprocess that converts
    the fp32 dq (and GQA dk/dv) accumulators reads them back at that multiple too, as the
    kernel wrote them. Allocation and zeroing stay at FA4's multiple of 32, which covers them.
    The five GEMMs of the backward then run 80 wide instead of 96: 5.6% less backward time at
    the ViT-H shape, gradients as accurate (`benchmarks/fa4_bwd_tiles.py`).

    Applied as a wrapper of FA4's `_bwd_postprocess_convert` that passes 16 instead of 32 on
    Hopper (swapped dK/dV, 64, and other GPUs are left alone), only where the kernel class
    tiles as 4.0.0b36 does and the postprocess takes `arch` and `hdim_multiple_of`; returns
    whether it applied.
    """
    kernel_cls = getattr(fa4, "FlashAttentionBackwardSm90", None)
    post = getattr(fa4, "_bwd_postprocess_convert", None)
    if getattr(post, "_titan_mimo_read_back", False):
        return True
    if kernel_cls is None or post is None:
        return False
    try:
        tiles_by_16 = _KERNEL_TILE_LINE in inspect.getsource(kernel_cls.__init__)
        names = list(inspect.signature(post).parameters)
    except (OSError, TypeError, ValueError):
        return False
    if not tiles_by_16 or "arch" not in names or "hdim_multiple_of" not in names:
        return False
    arch_at, multiple_at = names.index("arch"), names.index("hdim_multiple_of")

    @functools.wraps(post)  # keeps its compile_cache, which FA4 reads through this name
    def read_back_at_kernel_tile(*args, **kwargs):
        arch = args[arch_at] if len(args) > arch_at else kwargs["arch"]
        if arch // 10 == 9:
            if len(args) > multiple_at and args[multiple_at] == 32:
                args = (*args[:multiple_at], 16, *args[multiple_at + 1:])
            elif kwargs.get("hdim_multiple_of") == 32:
                kwargs["hdim_multiple_of"] = 16
        return post(*args, **kwargs)

    read_back_at_kernel_tile._titan_mimo_read_back = True
    fa4._bwd_postprocess_convert = read_back_at_kernel_tile
    return True


def _fix_sm90_backward_head_dim_rounding(fa4) -> None:
    """flash-attention pull request 2896, applied to the imported FA4 (checked on 4.0.0b36).

    FA4's Hopper backward kernel rounds its head-dim tile to a multiple of 16 (unless dK/dV are
    swapped) while `_flash_attn_bwd` lays out and reads back the fp32 dq accumulator in
    multiples of 32: at head dims that are not multiples of 32 (ViT-H's 80) the kernel writes dq
    with the wrong row stride and dq comes back wrong (relative error 1.3 on the H100; forward,
    dk and dv are right). This fix rounds the tile to 32 as well (the GEMMs then run 96 wide
    at head dim 80); `_fix_sm90_backward_dq_read_back` is preferred where it applies. On a
    version that already rounds to 32, this changes nothing; on one whose kernel class looks
    different, the fix is not applied and `_attend_fa4_padded` pads such head dims to 32.
    """
    global _fa4_head_dim_multiple
    kernel_cls = getattr(fa4, "FlashAttentionBackwardSm90", None)
    if getattr(kernel_cls, "_titan_mimo_rounds_to_32", False):
        return
    needed = ("tile_hdim", "tile_hdimv", "check_hdim_oob", "check_hdim_v_oob", "dKV_swapAB")
    if kernel_cls is None or not all(f"self.{name}" in inspect.getsource(kernel_cls.__init__)
                                      for name in needed):
        return

    class FlashAttentionBackwardSm90(kernel_cls):
        _titan_mimo_rounds_to_32 = True

        def __init__(self, dtype, head_dim, head_dim_v=None, *args, **kwargs):
            super().__init__(dtype, head_dim, head_dim_v, *args, **kwargs)
            if not self.dKV_swapAB:
                head_dim_v = head_dim if head_dim_v is None else head_dim_v
                self.tile_hdim = -(-head_dim // 32) * 32
                self.tile_hdimv = -(-head_dim_v // 32) * 32
                self.check_hdim_oob = head_dim != self.tile_hdim
                self.check_hdim_v_oob = head_dim_v != self.tile_hdimv
                self.shuffle_LSE = self.shuffle_dPsum = self.SdP_swapAB and self.tile_hdim <= 64

    fa4.FlashAttentionBackwardSm90 = FlashAttentionBackwardSm90
    _fa4_head_dim_multiple = 8


@torch.library.custom_op("titan_mimo::fa4_forward", mutates_args=())
def _fa4_forward(q_BSHE: Tensor, k_BSKE: Tensor, v_BSKE: Tensor, is_causal: bool,
                 softmax_scale: float) -> tuple[Tensor, Tensor]:
    """FlashAttention-4's forward: the output and the log-sum-exp [B, H, S] (float32) that its
    backward needs."""
    fa4 = _import_fa4()
    out_BSHE, lse_BHS = fa4._flash_attn_fwd(q_BSHE, k_BSKE, v_BSKE, softmax_scale=softmax_scale,
                                            causal=is_causal, return_lse=True)[:2]
    return out_BSHE, lse_BHS


@_fa4_forward.register_fake
def _(q_BSHE, k_BSKE, v_BSKE, is_causal, softmax_scale):
    b, s, h, _ = q_BSHE.shape
    out = q_BSHE.new_empty(b, s, h, v_BSKE.shape[-1])
    return out, q_BSHE.new_empty(b, h, s, dtype=torch.float32)


@torch.library.custom_op("titan_mimo::fa4_backward", mutates_args=())
def _fa4_backward(dout_BSHE: Tensor, q_BSHE: Tensor, k_BSKE: Tensor, v_BSKE: Tensor,
                  out_BSHE: Tensor, lse_BHS: Tensor, is_causal: bool,
                  softmax_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    fa4 = _import_fa4()
    dq, dk, dv = fa4._flash_attn_bwd(q_BSHE, k_BSKE, v_BSKE, out_BSHE, dout_BSHE.contiguous(),
                                     lse_BHS, softmax_scale, is_causal)[:3]
    return dq, dk, dv


@_fa4_backward.register_fake
def _(dout_BSHE, q_BSHE, k_BSKE, v_BSKE, out_BSHE, lse_BHS, is_causal, softmax_scale):
    return torch.empty_like(q_BSHE), torch.empty_like(k_BSKE), torch.empty_like(v_BSKE)


def _fa4_setup_context(ctx, inputs, output) -> None:
    q_BSHE, k_BSKE, v_BSKE, is_causal, softmax_scale = inputs
    out_BSHE, lse_BHS = output
    ctx.save_for_backward(q_BSHE, k_BSKE, v_BSKE, out_BSHE, lse_BHS)
    ctx.is_causal, ctx.softmax_scale = is_causal, softmax_scale


def _fa4_grad(ctx, dout_BSHE: Tensor, _dlse: Tensor | None):
    # The log-sum-exp is an internal output (attend_fa4 drops it), so its gradient is never used.
    q_BSHE, k_BSKE, v_BSKE, out_BSHE, lse_BHS = ctx.saved_tensors
    dq, dk, dv = _fa4_backward(dout_BSHE, q_BSHE, k_BSKE, v_BSKE, out_BSHE, lse_BHS,
                               ctx.is_causal, ctx.softmax_scale)
    return dq, dk, dv, None, None


_fa4_forward.register_autograd(_fa4_grad, setup_context=_fa4_setup_context)


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
    return _attend_fa4_padded(q_BSHE, k_BSKE, v_BSKE, is_causal)


def _attend_fa4_padded(q_BSHE: Tensor, k_BSKE: Tensor, v_BSKE: Tensor, is_causal: bool) -> Tensor:
    """The fa4 ops with head dims zero-padded to a multiple of `_fa4_head_dim_multiple`.

    Padding is the fallback for FA4's wrong dq at head dims that are not multiples of 32 (see
    `_fix_sm90_backward_head_dim_rounding`) where its fix could not be applied. Zero columns in
    q and k leave the scores unchanged, zero columns in v give zero output columns that are
    dropped, and the softmax scale stays 1/√E of the real width.
    Strided views (the split of a fused q/k/v projection) go in as they are: the kernel copies
    only a tensor whose last dim is not contiguous.
    """
    e = q_BSHE.shape[-1]
    padded = -(-e // _fa4_head_dim_multiple) * _fa4_head_dim_multiple
    if padded != e:
        q_BSHE, k_BSKE, v_BSKE = (F.pad(t, (0, padded - e)) for t in (q_BSHE, k_BSKE, v_BSKE))
    out_BSHE = _fa4_forward(q_BSHE, k_BSKE, v_BSKE, is_causal, e ** -0.5)[0]
    return out_BSHE[..., :e] if padded != e else out_BSHE


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
        _import_fa4()
        return attend_fa4
    if backend == "te":
        _import_te()
        return attend_te
    return attend_sdpa
