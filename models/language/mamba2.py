"""Mamba2 mixer in pure PyTorch (the reference path; GPU kernels replace the SSD scan,
`ssd_backend`; the causal conv + SiLU and the gated RMSNorm, `mamba_kernels`).

Projections are separate Linear layers (z, x, B, C, dt) rather than mamba-ssm's single fused
in_proj, so tensor parallelism can shard heads and groups by plain column sharding; without
tensor parallelism they still run as one GEMM (`fused_linears`). Likewise one depthwise conv per
stream (x, B, C), which is mathematically identical to mamba-ssm's conv over the concatenated xBC
because a depthwise conv treats channels independently.

Shape legend:
    B batch, S sequence, D model dim, H SSM heads, P head dim, G groups, N state size,
    I inner width (H * P), K conv kernel width, C any channel count.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common import fused_linears, local_tensor
from .args import HybridLMArgs
from .ssd_kernels import ssd_function

__all__ = ["DepthwiseCausalConv1d", "GatedRMSNorm", "Mamba2Mixer"]

DT_MIN, DT_MAX, DT_INIT_FLOOR = 0.001, 0.1, 1e-4
"""mamba-ssm's defaults for the initial step sizes dt (log-uniform in [DT_MIN, DT_MAX])."""
A_INIT_RANGE = (1.0, 16.0)
"""mamba-ssm's default range of the initial per-head decay rates -A."""


class DepthwiseCausalConv1d(nn.Module):
    """Per-channel causal convolution over the sequence, weight [C, 1, K] as in nn.Conv1d."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x_BSC: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return self._shifted_sum(x_BSC)
        seq_len, channels = x_BSC.shape[1:]
        # Pad K-1 on both sides and keep the first S outputs: output t sees inputs t-K+1..t only.
        # groups comes from the input so a tensor-parallel shard of the channels works unchanged.
        y_BCS = F.conv1d(
            x_BSC.transpose(1, 2),
            local_tensor(self.weight),
            local_tensor(self.bias),
            padding=self.kernel_size - 1,
            groups=channels,
        )
        return y_BCS[..., :seq_len].transpose(1, 2)

    def _shifted_sum(self, x_BSC: Tensor) -> Tensor:
        """The same convolution as K shifted multiply-adds on [B, S, C], in float32.

        Used under torch.compile (the eager path keeps cuDNN/ATen's conv1d, so eager numerics are
        unchanged): Inductor fuses the padding, the K products, the bias and the caller's SiLU into
        one kernel with no [B, C, S] transposes, where ATen's depthwise conv (a generic
        conv_depthwise2d kernel plus layout copies) was ~5% of the hybrid's GPU time.
        Runs in at least float32; equal to the conv up to round-off (summation order).
        """
        k, seq_len = self.kernel_size, x_BSC.shape[1]
        dtype = torch.promote_types(x_BSC.dtype, torch.float32)
        w_CK = local_tensor(self.weight)[:, 0, :].to(dtype)
        # Padded in the input's dtype and widened per slice: padded after widening, the float32
        # copy of the input was what the compiled graph kept for the backward (2 bytes more per
        # channel and token than the bf16 input, ~4.5 GB on hybrid_2b at 2 x 8192 tokens).
        xp_BSC = F.pad(x_BSC, (0, 0, k - 1, 0))
        y_BSC = local_tensor(self.bias).to(dtype) + xp_BSC[:, 0:seq_len].to(dtype) * w_CK[:, 0]
        for j in range(1, k):
            y_BSC = y_BSC + xp_BSC[:, j:j + seq_len].to(dtype) * w_CK[:, j]
        return y_BSC.to(x_BSC.dtype)

    def init_param(self, name: str, t: Tensor, g: torch.Generator) -> None:
        # nn.Conv1d's default (kaiming_uniform with a=sqrt(5)), which is what mamba-ssm keeps:
        # weight and bias uniform in ±1/sqrt(fan_in), fan_in = K for a depthwise conv.
        bound = 1.0 / math.sqrt(self.kernel_size)
        if name not in ("weight", "bias"):
            raise ValueError(f"DepthwiseCausalConv1d has no parameter {name!r}")
        with torch.no_grad():
            t.uniform_(-bound, bound, generator=g)


class GatedRMSNorm(nn.Module):
    """norm(y * silu(z)) per group of channels, then a learned scale.

    Matches mamba-ssm's RMSNormGated(norm_before_gate=False, group_size=I/G): the mean square is
    taken over each group's I/G channels separately, so a tensor-parallel shard holding whole
    groups normalises exactly as the unsharded layer does.
    """

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, y_BSI: Tensor, z_BSI: Tensor, n_groups: int) -> Tensor:
        h_BSI = (y_BSI * F.silu(z_BSI)).float()
        h_BSGC = h_BSI.view(*h_BSI.shape[:-1], n_groups, -1)
        h_BSGC = h_BSGC * torch.rsqrt(h_BSGC.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (h_BSGC.view_as(h_BSI) * local_tensor(self.weight).float()).to(y_BSI.dtype)

    def init_param(self, name: str, t: Tensor, g: torch.Generator) -> None:
        if name != "weight":
            raise ValueError(f"GatedRMSNorm has no parameter {name!r}")
        with torch.no_grad():
            t.fill_(1.0)


def triton_kernels(kind: str) -> tuple[Callable[[Tensor, Tensor, Tensor], Tensor],
                                     Callable[[Tensor, Tensor, Tensor, int, float], Tensor]] | None:
    """The mixer's kernels for `HybridLMArgs.mamba_kernels`: None for "torch" (the modules' PyTorch,
    fused by Inductor when compiled); for "triton", SiLU(causal conv) (`conv_triton.causal_conv1d`)
    and the gated RMSNorm (`gated_norm_triton.gated_rms_norm`), imported here so a missing Triton
    fails at build time."""
    if kind == "torch":
        return None
    try:
        from .conv_triton import causal_conv1d
        from .gated_norm_triton import gated_rms_norm
    except ImportError as e:
        raise ImportError(f"mamba_kernels='triton' needs Triton (installed with PyTorch's CUDA builds): {e}; "
                          "or use mamba_kernels='torch'") from e
    return causal_conv1d, gated_rms_norm


class Mamba2Mixer(nn.Module):
    """Mamba-2 token mixer: projections → causal conv + SiLU → SSD scan → gated norm → out_proj."""

    def __init__(self, args: HybridLMArgs):
        super().__init__()
        d_inner = args.mamba_n_heads * args.mamba_head_dim
        d_bc = args.mamba_n_groups * args.mamba_d_state
        self.head_dim = args.mamba_head_dim
        self.d_state = args.mamba_d_state
        self.chunk_size = args.mamba_chunk_size
        # Resolved at build time so a missing optional kernel fails before any training work.
        self.ssd = ssd_function(args.ssd_backend, args.ssd_keep_states)
        self.conv_kernel, self.norm_kernel = triton_kernels(args.mamba_kernels) or (None, None)
        self.in_proj_z = nn.Linear(args.dim, d_inner, bias=False)
        self.in_proj_x = nn.Linear(args.dim, d_inner, bias=False)
        self.in_proj_B = nn.Linear(args.dim, d_bc, bias=False)
        self.in_proj_C = nn.Linear(args.dim, d_bc, bias=False)
        self.in_proj_dt = nn.Linear(args.dim, args.mamba_n_heads, bias=False)
        self.conv_x = DepthwiseCausalConv1d(d_inner, args.mamba_d_conv)
        self.conv_B = DepthwiseCausalConv1d(d_bc, args.mamba_d_conv)
        self.conv_C = DepthwiseCausalConv1d(d_bc, args.mamba_d_conv)
        self.dt_bias = nn.Parameter(torch.zeros(args.mamba_n_heads))
        self.A_log = nn.Parameter(torch.zeros(args.mamba_n_heads))
        self.D = nn.Parameter(torch.ones(args.mamba_n_heads))
        self.norm = GatedRMSNorm(d_inner, args.norm_eps)
        self.out_proj = nn.Linear(d_inner, args.dim, bias=False)

    def forward(self, u_BSD: Tensor) -> Tensor:
        z_BSI, x_BSI, B_BSC, C_BSC, dt_BSH = fused_linears(
            u_BSD, [self.in_proj_z, self.in_proj_x, self.in_proj_B, self.in_proj_C, self.in_proj_dt])
        x_BSI = self._conv_silu(self.conv_x, x_BSI)
        B_BSC = self._conv_silu(self.conv_B, B_BSC)
        C_BSC = self._conv_silu(self.conv_C, C_BSC)
        # softplus in float32: dt spans 1e-3..1e-1 and feeds exp(dt * A) in the scan.
        dt_BSH = F.softplus((dt_BSH + local_tensor(self.dt_bias)).float())
        # Local head/group counts come from the projected shapes: under tensor parallelism this
        # rank holds a slice of the heads, not args.mamba_n_heads.
        b, s, h = dt_BSH.shape
        g = B_BSC.shape[-1] // self.d_state
        A_H = -torch.exp(local_tensor(self.A_log).float())
        y_BSHP = self.ssd(
            x_BSI.view(b, s, h, self.head_dim),
            dt_BSH,
            A_H,
            B_BSC.view(b, s, g, self.d_state),
            C_BSC.view(b, s, g, self.d_state),
            self.chunk_size,
            local_tensor(self.D),
        )
        y_BSI = y_BSHP.reshape(b, s, h * self.head_dim)
        if self.norm_kernel is None:
            y_BSI = self.norm(y_BSI, z_BSI, n_groups=g)
        else:
            y_BSI = self.norm_kernel(y_BSI, z_BSI, local_tensor(self.norm.weight), g, self.norm.eps)
        return self.out_proj(y_BSI)

    def _conv_silu(self, conv: DepthwiseCausalConv1d, x_BSC: Tensor) -> Tensor:
        if self.conv_kernel is None:
            return F.silu(conv(x_BSC))
        return self.conv_kernel(x_BSC, local_tensor(conv.weight)[:, 0, :], local_tensor(conv.bias))

    def init_param(self, name: str, t: Tensor, g: torch.Generator) -> None:
        with torch.no_grad():
            if name == "A_log":
                t.uniform_(*A_INIT_RANGE, generator=g).log_()
            elif name == "dt_bias":
                u = torch.rand(t.shape, generator=g, dtype=torch.float64, device=t.device)
                dt = torch.exp(u * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
                dt = dt.clamp(min=DT_INIT_FLOOR)
                # Inverse of softplus, so softplus(dt_bias) == dt at init.
                t.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name == "D":
                t.fill_(1.0)
            else:
                raise ValueError(f"Mamba2Mixer has no directly owned parameter {name!r}")

    @staticmethod
    def forward_flops_per_token(args: HybridLMArgs, seq_len: int) -> int:
        """Forward FLOPs per token of one mixer over a sequence of seq_len tokens.

        Linears: 2·D·(2I + 2GN + H) in, 2·I·D out. Depthwise convs: 2·K·(I + 2GN).
        Chunked SSD (chunk length L, S zero-padded up to c·L as the scan does; per sequence):
          intra-chunk C·Bᵀ            c · 2·L²·N·G
          (decay ⊙ CBᵀ)·X              c · 2·L²·H·P
          chunk states Bᵀ·X            c · 2·L·N·H·P
          state passing (c+1)² matrix  2·(c+1)²·H·P·N   (Listing 1's matrix form, as run here)
          state → output C·state       c · 2·L·N·H·P
        divided by S. Elementwise work (exp, decay masks, norms, gating) is not counted.
        """
        h, p = args.mamba_n_heads, args.mamba_head_dim
        g, n = args.mamba_n_groups, args.mamba_d_state
        d, i = args.dim, h * p
        linears = 2 * d * (2 * i + 2 * g * n + h) + 2 * i * d
        convs = 2 * args.mamba_d_conv * (i + 2 * g * n)
        L = args.mamba_chunk_size
        c = -(-seq_len // L)
        scan = c * (2 * L * L * n * g + 2 * L * L * h * p + 4 * L * n * h * p)
        scan += 2 * (c + 1) ** 2 * h * p * n
        return linears + convs + scan // seq_len
