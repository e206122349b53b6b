"""FlashAttention-4 (the `flash-attn-4` package, `flash_attn.cute`: CuTe-DSL kernels for Hopper
and Blackwell, compiled on first use for each shape) behind `attention_backend = "fa4"`, and the
one place that reaches into its internals.

It takes [B, S, H, E] and grouped-query heads natively, so no transposes and no repeated
keys/values. Why it exists: at the ViT-H head width of 80, cuDNN's fused attention runs ~355
TFLOP/s on an H100 against ~545 at width 128 (`benchmarks/attention_bench.py`); FlashAttention-4
runs width 80 as it is (with a fix of its Hopper backward applied at import,
`_fix_sm90_backward_head_dims`). The kernels are wrapped as `torch.library` custom ops (forward,
backward, fake shapes), so a per-block `torch.compile` keeps them as opaque calls instead of
tracing into CuTe DSL. The forward and backward entry points are FlashAttention-4's private
`_flash_attn_fwd` / `_flash_attn_bwd`, the same ones PyTorch's own FA4 registration
(`torch.nn.attention._fa4`) calls; checked against flash-attn-4 4.0.0b36.
"""

from __future__ import annotations

import functools
import importlib
import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FA4_CHECKED", "MISSING_FA4", "attend", "import_fa4"]

FA4_CHECKED = "4.0.0b36"
"""The flash-attn-4 release whose private entry points and Hopper backward kernel the fixes
below were checked on; tests/models/test_attention_kernels.py fails on another one (GPU)."""

MISSING_FA4 = (
    "attention_backend='fa4' needs FlashAttention-4 (`pip install flash-attn-4`: the "
    "`flash_attn.cute` package and NVIDIA's CUTLASS DSL; Hopper or Blackwell GPUs); "
    "or use attention_backend='sdpa'"
)
_FA4_MODULE = "flash_attn.cute.interface"
_fa4_head_dim_multiple = 32
"""Head dims go to FA4 zero-padded to a multiple of this: 8 (its alignment) once a fix of its
Hopper backward applied (`_fix_sm90_backward_head_dims`), else 32 (see `_attend_fa4_padded`)."""


def import_fa4():
    """`flash_attn.cute.interface`, its Hopper backward fixed once (`_fix_sm90_backward_head_dims`);
    ImportError naming the package where it is missing."""
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
    fa4 = import_fa4()
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
    fa4 = import_fa4()
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


def attend(q_BSHE: Tensor, k_BSKE: Tensor, v_BSKE: Tensor, is_causal: bool) -> Tensor:
    """softmax(q kᵀ / √E) v per head through the fa4 ops ([B, S, H, E], CUDA fp16/bf16)."""
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
