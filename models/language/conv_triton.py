"""The Mamba2 mixer's depthwise causal convolution (+ SiLU) as Triton kernels: what
`HybridLMArgs.mamba_kernels = "triton"` runs.

Under torch.compile the pure-PyTorch conv (`DepthwiseCausalConv1d._shifted_sum`) becomes
Inductor kernels that move ~4x the bytes they need: a padded copy of the input, the conv in the
forward, its recompute and the SiLU backward and the weight gradient as separate passes in the
backward (~3 ms per Mamba2 layer and step at 3 x 8192 tokens on an H200, ~12% of hybrid_2b's
step). Here the forward is one pass (read x, write SiLU(conv(x))) and the backward one more (read
x and dy, write dx, recomputing the conv in registers), each on any row stride, so x can be a
slice of the fused in-projection's output.

Kernel width 4 only (every Mamba2 model: mamba-ssm's and Nemotron-H's d_conv is 4): the seven
shifted tiles the backward reads are named variables, not a loop. The backward is bound by its
instructions (address and mask math, four SiLU gradients per element), not its bytes: ~1/4 of
the H200's memory bandwidth. The weight and bias gradients are per-program partial sums added up
by one `sum` (deterministic: no atomics).

Shape legend: B batch, S sequence, C channels, K kernel width (4), P programs along S.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_launch import check_device, launch_on, unit_last_stride

__all__ = ["BWD_TILES", "FWD_TILES", "KERNEL_WIDTH", "Tiles", "causal_conv1d"]

KERNEL_WIDTH = 4
"""The only kernel width these kernels take."""


@dataclass(frozen=True)
class Tiles:
    """How a kernel splits its work: tiles of `rows` x `channels`, `warps` per program; the
    backward's programs walk `rows_per_program` rows each (fewer partial weight gradients). The
    backward's tiles set the order in which its weight gradient is summed, so they are fixed, not
    autotuned: a run repeats bitwise."""

    rows: int
    channels: int
    warps: int
    rows_per_program: int = 0


FWD_TILES = Tiles(rows=16, channels=256, warps=4)
BWD_TILES = Tiles(rows=16, channels=128, warps=4, rows_per_program=256)
"""The fastest tiles of `python -m benchmarks.mamba_kernels --sweep` on an H200 at hybrid_2b's
shape: forward 0.24-0.30 ms, backward 1.0 ms for a layer's three convs per step (3 x 8192
tokens), against ~3 ms of the compiled torch conv (docs/benchmarks.md)."""


@triton.jit
def _load_rows(ptr, rows, cols, S, C, stride_s):
    mask = (rows >= 0)[:, None] & (rows < S)[:, None] & (cols < C)[None, :]
    return tl.load(ptr + rows[:, None] * stride_s + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _causal_conv1d_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, S, C, stride_x_b, stride_x_s,
                              stride_y_b, stride_y_s, SILU: tl.constexpr,
                              BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_s, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    x_ptr += b.to(tl.int64) * stride_x_b
    y_ptr += b.to(tl.int64) * stride_y_b
    w0 = tl.load(w_ptr + cols * 4 + 0, mask=c_ok, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + cols * 4 + 1, mask=c_ok, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + cols * 4 + 2, mask=c_ok, other=0.0).to(tl.float32)
    w3 = tl.load(w_ptr + cols * 4 + 3, mask=c_ok, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)
    # y[t] = bias + w0 x[t-3] + w1 x[t-2] + w2 x[t-1] + w3 x[t] (zeros before the sequence)
    a = bias[None, :] + w0[None, :] * _load_rows(x_ptr, rows - 3, cols, S, C, stride_x_s)
    a += w1[None, :] * _load_rows(x_ptr, rows - 2, cols, S, C, stride_x_s)
    a += w2[None, :] * _load_rows(x_ptr, rows - 1, cols, S, C, stride_x_s)
    a += w3[None, :] * _load_rows(x_ptr, rows, cols, S, C, stride_x_s)
    if SILU:
        a = a * tl.sigmoid(a)
    mask = (rows < S)[:, None] & c_ok[None, :]
    tl.store(y_ptr + rows[:, None] * stride_y_s + cols[None, :], a.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_pre_activation(dy_ptr, rows, cols, S, C, stride_dy_s, a, SILU: tl.constexpr):
    """dL/d(conv output) at `rows` from dL/dy there and the conv output a."""
    dy = _load_rows(dy_ptr, rows, cols, S, C, stride_dy_s)
    if SILU:
        sig = tl.sigmoid(a)
        dy = dy * sig * (1.0 + a * (1.0 - sig))
    return dy


@triton.jit
def _causal_conv1d_bwd_kernel(x_ptr, w_ptr, b_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, S, C,
                              stride_x_b, stride_x_s, stride_dy_b, stride_dy_s, stride_dx_b,
                              stride_dx_s, SILU: tl.constexpr, BLOCK_S: tl.constexpr,
                              BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
    pid_s, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    x_ptr += b.to(tl.int64) * stride_x_b
    dy_ptr += b.to(tl.int64) * stride_dy_b
    dx_ptr += b.to(tl.int64) * stride_dx_b
    w0 = tl.load(w_ptr + cols * 4 + 0, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    w1 = tl.load(w_ptr + cols * 4 + 1, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + cols * 4 + 2, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    w3 = tl.load(w_ptr + cols * 4 + 3, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    bias = tl.load(b_ptr + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    # The weight and bias gradients of this program's rows, kept per tile row and summed once at
    # the end: a sum over each tile's rows as it goes (a cross-warp reduction per tile) made the
    # kernel 2-2.5x slower on an H200.
    dw0 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    dw1 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    dw2 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    dw3 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    # Constant loop bounds (the program's offset added inside): Triton's interpreter cannot take
    # a bound that depends on the program id with numpy >= 2.4.
    for i in tl.range(0, ROWS // BLOCK_S):
        rows = pid_s * ROWS + i * BLOCK_S + tl.arange(0, BLOCK_S)
        # g_m: the gradient at the conv output of row t+m, which reads x[t+m-3 .. t+m] (zero
        # past the sequence: dy is masked there). Each x tile is loaded where it is first needed,
        # so at most five are live.
        xm3 = _load_rows(x_ptr, rows - 3, cols, S, C, stride_x_s)
        xm2 = _load_rows(x_ptr, rows - 2, cols, S, C, stride_x_s)
        xm1 = _load_rows(x_ptr, rows - 1, cols, S, C, stride_x_s)
        x0 = _load_rows(x_ptr, rows, cols, S, C, stride_x_s)
        g = _grad_pre_activation(dy_ptr, rows, cols, S, C, stride_dy_s,
                                 bias + w0 * xm3 + w1 * xm2 + w2 * xm1 + w3 * x0, SILU)
        dw0 += g * xm3
        dw1 += g * xm2
        dw2 += g * xm1
        dw3 += g * x0
        db += g
        # x[t] reaches the outputs t..t+3 through w3..w0.
        dx = g * w3
        xp1 = _load_rows(x_ptr, rows + 1, cols, S, C, stride_x_s)
        dx += w2 * _grad_pre_activation(dy_ptr, rows + 1, cols, S, C, stride_dy_s,
                                        bias + w0 * xm2 + w1 * xm1 + w2 * x0 + w3 * xp1, SILU)
        xp2 = _load_rows(x_ptr, rows + 2, cols, S, C, stride_x_s)
        dx += w1 * _grad_pre_activation(dy_ptr, rows + 2, cols, S, C, stride_dy_s,
                                        bias + w0 * xm1 + w1 * x0 + w2 * xp1 + w3 * xp2, SILU)
        xp3 = _load_rows(x_ptr, rows + 3, cols, S, C, stride_x_s)
        dx += w0 * _grad_pre_activation(dy_ptr, rows + 3, cols, S, C, stride_dy_s,
                                        bias + w0 * x0 + w1 * xp1 + w2 * xp2 + w3 * xp3, SILU)
        mask = (rows < S)[:, None] & c_ok[None, :]
        tl.store(dx_ptr + rows[:, None] * stride_dx_s + cols[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=mask)
    # Partial sums of this program: dw [P, 4, C], db [P, C], P = B x programs along S.
    part = b * tl.num_programs(0) + pid_s
    dw_ptr += part.to(tl.int64) * 4 * C
    tl.store(dw_ptr + 0 * C + cols, tl.sum(dw0, axis=0), mask=c_ok)
    tl.store(dw_ptr + 1 * C + cols, tl.sum(dw1, axis=0), mask=c_ok)
    tl.store(dw_ptr + 2 * C + cols, tl.sum(dw2, axis=0), mask=c_ok)
    tl.store(dw_ptr + 3 * C + cols, tl.sum(dw3, axis=0), mask=c_ok)
    tl.store(db_ptr + part.to(tl.int64) * C + cols, tl.sum(db, axis=0), mask=c_ok)


def _check(x: Tensor, weight: Tensor, bias: Tensor) -> None:
    check_device(x, "mamba_kernels")
    if x.dim() != 3 or weight.shape != (x.shape[-1], KERNEL_WIDTH) or bias.shape != (x.shape[-1],):
        raise ValueError(f"causal_conv1d: x [B, S, C], weight [C, {KERNEL_WIDTH}] and bias [C] expected, got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")


@torch.library.custom_op("titan_mimo::causal_conv1d_fwd", mutates_args=())
def _conv_fwd(x: Tensor, weight: Tensor, bias: Tensor, silu: bool) -> Tensor:
    _check(x, weight, bias)
    x, weight, bias = unit_last_stride(x), weight.contiguous(), bias.contiguous()
    batch, seq, channels = x.shape
    y = torch.empty(batch, seq, channels, dtype=x.dtype, device=x.device)
    t = FWD_TILES
    grid = (triton.cdiv(seq, t.rows), triton.cdiv(channels, t.channels), batch)
    with launch_on(x.device):
        _causal_conv1d_fwd_kernel[grid](x, weight, bias, y, seq, channels, x.stride(0), x.stride(1), y.stride(0),
                                        y.stride(1), SILU=silu, BLOCK_S=t.rows, BLOCK_C=t.channels,
                                        num_warps=t.warps)
    return y


@_conv_fwd.register_fake
def _(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("titan_mimo::causal_conv1d_bwd", mutates_args=())
def _conv_bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor, silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx in x's dtype, dweight in weight's, dbias in bias's)."""
    _check(x, weight, bias)
    x, dy, w = unit_last_stride(x), unit_last_stride(dy), weight.contiguous()
    batch, seq, channels = x.shape
    dx = torch.empty(batch, seq, channels, dtype=x.dtype, device=x.device)
    t = BWD_TILES
    programs_s = triton.cdiv(seq, t.rows_per_program)
    dw_parts = torch.empty(batch * programs_s, KERNEL_WIDTH, channels, dtype=torch.float32, device=x.device)
    db_parts = torch.empty(batch * programs_s, channels, dtype=torch.float32, device=x.device)
    grid = (programs_s, triton.cdiv(channels, t.channels), batch)
    with launch_on(x.device):
        _causal_conv1d_bwd_kernel[grid](x, w, bias.contiguous(), dy, dx, dw_parts, db_parts, seq, channels,
                                        x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), dx.stride(0),
                                        dx.stride(1), SILU=silu, BLOCK_S=t.rows, BLOCK_C=t.channels,
                                        ROWS=t.rows_per_program, num_warps=t.warps)
    dw = dw_parts.sum(0).t().contiguous().to(weight.dtype)
    return dx, dw, db_parts.sum(0).to(bias.dtype)


@_conv_bwd.register_fake
def _(dy, x, weight, bias, silu):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _grad(ctx, dy: Tensor):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = _conv_bwd(dy, x, weight, bias, ctx.silu)
    return dx, dw, db, None


_conv_fwd.register_autograd(_grad, setup_context=_setup_context)


def causal_conv1d(x_BSC: Tensor, weight_CK: Tensor, bias_C: Tensor, silu: bool = True) -> Tensor:
    """SiLU(causal depthwise conv1d of x) (or the conv alone): y[t] = bias + Σ_j w[:, j] x[t-3+j],
    zeros before the sequence, float32 inside, output in x's dtype. x may be any [B, S, C] view
    with unit channel stride; CUDA tensors (or CPU ones under TRITON_INTERPRET=1)."""
    return _conv_fwd(x_BSC, weight_CK, bias_C, silu)
