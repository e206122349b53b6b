"""The Mamba2 mixer's gated RMSNorm, norm(y * SiLU(z)) per group times a learned scale, as Triton
kernels: what `HybridLMArgs.mamba_kernels = "triton"` runs for the norm (`GatedRMSNorm` is the reference).

Compiled from PyTorch it is five Inductor kernels per layer and step (the mean square, the
normalised output, and three in the backward; ~1 ms per layer at hybrid_2b's 3 x 8192 tokens on
an H200) where the bytes it needs are one pass forward (read y and z, write the output) and one
backward (read y, z and the output's gradient, write dy and dz). Here each is one kernel; the
forward keeps the per-group reciprocal RMS (4 bytes per group and token) for the backward.

The weight gradient is per-program partial sums added by one `sum`, on fixed tiles: a run
repeats bitwise. On an H200 at hybrid_2b's shape it takes 0.61 ms per layer forward + backward
against 0.90 ms compiled from PyTorch (`python -m benchmarks.mamba_kernels`).

Shape legend: R rows (tokens), I inner width, G groups, W group width (I / G).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_launch import check_device, launch_on, unit_last_stride

__all__ = ["BLOCK_ROWS", "ROWS_PER_PROGRAM", "gated_rms_norm"]

BLOCK_ROWS = 4
"""Rows of one tile (by a whole group's width: 4 x 512 on hybrid_2b)."""
ROWS_PER_PROGRAM = 64
"""Rows one backward program walks, summing its weight gradient in registers."""


@triton.jit
def _gated(y_ptr, z_ptr, rows, cols, R, W, stride_y, stride_z):
    """(y * SiLU(z), y, z, sigmoid(z), the tile's mask), in float32, zeros outside the tile."""
    mask = (rows < R)[:, None] & (cols < W)[None, :]
    y = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + rows[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(z)
    return y * z * sig, y, z, sig, mask


@triton.jit
def _gated_rms_norm_fwd_kernel(y_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, R, W, G, eps, stride_y, stride_z,
                               stride_out, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_r, g = tl.program_id(0), tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_W)
    offset = g * W
    h, _, _, _, mask = _gated(y_ptr + offset, z_ptr + offset, rows, cols, R, W, stride_y, stride_z)
    rstd = tl.rsqrt(tl.sum(h * h, axis=1) / W + eps)
    w = tl.load(w_ptr + offset + cols, mask=cols < W, other=0.0).to(tl.float32)
    out = h * rstd[:, None] * w[None, :]
    tl.store(out_ptr + offset + rows[:, None] * stride_out + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask)
    tl.store(rstd_ptr + rows * G + g, rstd, mask=rows < R)


@triton.jit
def _gated_rms_norm_bwd_kernel(dout_ptr, y_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dz_ptr, dw_ptr, R, W, G, I,
                               stride_dout, stride_y, stride_z, stride_dy, stride_dz,
                               BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, ROWS: tl.constexpr):
    pid_r, g = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_W)
    offset = g * W
    w = tl.load(w_ptr + offset + cols, mask=cols < W, other=0.0).to(tl.float32)[None, :]
    dw = tl.zeros([BLOCK_R, BLOCK_W], dtype=tl.float32)
    for i in tl.range(0, ROWS // BLOCK_R):
        rows = pid_r * ROWS + i * BLOCK_R + tl.arange(0, BLOCK_R)
        h, y, z, sig, mask = _gated(y_ptr + offset, z_ptr + offset, rows, cols, R, W, stride_y, stride_z)
        rstd = tl.load(rstd_ptr + rows * G + g, mask=rows < R, other=0.0)[:, None]
        dout = tl.load(dout_ptr + offset + rows[:, None] * stride_dout + cols[None, :], mask=mask,
                       other=0.0).to(tl.float32)
        normed = h * rstd
        dw += dout * normed
        # d/dh of h * rstd(h) against dn = dout * w: rstd * (dn - normed * mean(dn * normed)).
        dn = dout * w
        dh = rstd * (dn - normed * (tl.sum(dn * normed, axis=1) / W)[:, None])
        dy = dh * z * sig
        dz = dh * y * sig * (1.0 + z * (1.0 - sig))
        tl.store(dy_ptr + offset + rows[:, None] * stride_dy + cols[None, :], dy.to(dy_ptr.dtype.element_ty),
                 mask=mask)
        tl.store(dz_ptr + offset + rows[:, None] * stride_dz + cols[None, :], dz.to(dz_ptr.dtype.element_ty),
                 mask=mask)
    tl.store(dw_ptr + pid_r.to(tl.int64) * I + offset + cols, tl.sum(dw, axis=0), mask=cols < W)


def _check(y: Tensor, z: Tensor, weight: Tensor, n_groups: int) -> None:
    check_device(y, "mamba_kernels")
    width = y.shape[-1]
    if z.shape != y.shape or weight.shape != (width,) or width % n_groups:
        raise ValueError(f"gated_rms_norm: y and z [..., I] alike, weight [I], I divisible by the {n_groups} "
                         f"groups; got {tuple(y.shape)}, {tuple(z.shape)}, {tuple(weight.shape)}")


def _rows(t: Tensor) -> Tensor:
    """t as [R, I] with unit column stride (a view where the layout allows, e.g. a slice of a
    wider last dim)."""
    t = unit_last_stride(t)
    return t.reshape(-1, t.shape[-1])


@torch.library.custom_op("titan_mimo::gated_rms_norm_fwd", mutates_args=())
def _norm_fwd(y: Tensor, z: Tensor, weight: Tensor, n_groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """(output in y's dtype, shape of y; reciprocal RMS [R, G] in float32)."""
    _check(y, z, weight, n_groups)
    y2, z2 = _rows(y), _rows(z)
    rows, width = y2.shape
    group = width // n_groups
    out = torch.empty(rows, width, dtype=y.dtype, device=y.device)
    rstd = torch.empty(rows, n_groups, dtype=torch.float32, device=y.device)
    grid = (triton.cdiv(rows, BLOCK_ROWS), n_groups)
    with launch_on(y.device):
        _gated_rms_norm_fwd_kernel[grid](y2, z2, weight.contiguous(), out, rstd, rows, group, n_groups, eps,
                                         y2.stride(0), z2.stride(0), out.stride(0), BLOCK_R=BLOCK_ROWS,
                                         BLOCK_W=triton.next_power_of_2(group), num_warps=4)
    return out.view(y.shape), rstd


@_norm_fwd.register_fake
def _(y, z, weight, n_groups, eps):
    rows = y.numel() // y.shape[-1]
    return y.new_empty(y.shape), y.new_empty(rows, n_groups, dtype=torch.float32)


@torch.library.custom_op("titan_mimo::gated_rms_norm_bwd", mutates_args=())
def _norm_bwd(dout: Tensor, y: Tensor, z: Tensor, weight: Tensor, rstd: Tensor,
              n_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """(dy in y's dtype, dz in z's, dweight in weight's), each in its input's shape."""
    _check(y, z, weight, n_groups)
    d2, y2, z2 = _rows(dout), _rows(y), _rows(z)
    rows, width = y2.shape
    group = width // n_groups
    dy = torch.empty(rows, width, dtype=y.dtype, device=y.device)
    dz = torch.empty(rows, width, dtype=z.dtype, device=z.device)
    programs = triton.cdiv(rows, ROWS_PER_PROGRAM)
    dw_parts = torch.empty(programs, width, dtype=torch.float32, device=y.device)
    with launch_on(y.device):
        _gated_rms_norm_bwd_kernel[(programs, n_groups)](
            d2, y2, z2, weight.contiguous(), rstd, dy, dz, dw_parts, rows, group, n_groups, width,
            d2.stride(0), y2.stride(0), z2.stride(0), dy.stride(0), dz.stride(0), BLOCK_R=BLOCK_ROWS,
            BLOCK_W=triton.next_power_of_2(group), ROWS=ROWS_PER_PROGRAM, num_warps=4)
    return dy.view(y.shape), dz.view(z.shape), dw_parts.sum(0).to(weight.dtype)


@_norm_bwd.register_fake
def _(dout, y, z, weight, rstd, n_groups):
    return y.new_empty(y.shape), z.new_empty(z.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output) -> None:
    y, z, weight, n_groups, _ = inputs
    ctx.save_for_backward(y, z, weight, output[1])
    ctx.n_groups = n_groups


def _grad(ctx, dout: Tensor, _drstd):
    y, z, weight, rstd = ctx.saved_tensors
    dy, dz, dw = _norm_bwd(dout, y, z, weight, rstd, ctx.n_groups)
    return dy, dz, dw, None, None


_norm_fwd.register_autograd(_grad, setup_context=_setup_context)


def gated_rms_norm(y: Tensor, z: Tensor, weight: Tensor, n_groups: int, eps: float) -> Tensor:
    """`GatedRMSNorm`'s output: norm(y * SiLU(z)) over each of `n_groups` equal groups of the last
    dim, times `weight`; float32 inside, output in y's dtype. y, z [..., I] with unit last-dim
    stride (z may be a slice of a wider tensor); CUDA (or CPU under TRITON_INTERPRET=1)."""
    return _norm_fwd(y, z, weight, n_groups, eps)[0]
