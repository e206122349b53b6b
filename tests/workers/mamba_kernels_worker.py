"""Runs the Mamba2 mixer's Triton kernels (`conv_triton`, `gated_norm_triton`) on CPU under
Triton's interpreter and saves, for tests/models/test_mamba_kernels.py, each case's outputs and
gradients next to the pure-PyTorch reference's: the conv op against `F.conv1d` (+ SiLU), the norm
op against `GatedRMSNorm`, and a Mamba2 mixer on both Triton kernels against the same mixer on
"torch", eager and compiled (the compiled one runs the ops' fake versions, so their shapes and
strides are checked too). Float32 (the interpreter's bf16 is not meaningful; bf16 is checked on
the GPU).

TRITON_INTERPRET=1 must be set before triton is imported (@triton.jit reads it), hence a separate
process.

Usage: TRITON_INTERPRET=1 python tests/workers/mamba_kernels_worker.py OUT.pt
"""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch
import torch.nn.functional as F
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language import conv_triton
from titan_mimo.models.language.conv_triton import causal_conv1d
from titan_mimo.models.language.gated_norm_triton import gated_rms_norm
from titan_mimo.models.language.mamba2 import GatedRMSNorm, Mamba2Mixer

# (batch, sequence, channels, SiLU): sequences shorter than the kernel, than a tile, across
# several backward programs (256 rows each); channels not a multiple of the 128-wide tile.
DEFAULT_TILES = conv_triton.FWD_TILES, conv_triton.BWD_TILES
OP_CASES = [(2, 70, 200, True), (1, 600, 130, False), (3, 3, 7, True), (1, 257, 128, True)]


def reference(x, w, b, silu):
    y = F.conv1d(x.transpose(1, 2), w[:, None, :], b, padding=3, groups=x.shape[-1])
    y = y[..., :x.shape[1]].transpose(1, 2)
    return F.silu(y) if silu else y


def op_case(batch, seq, channels, silu):
    g = torch.Generator().manual_seed(seq * channels)
    # x is a slice of a wider last dim, as the mixer's x, B and C are of the fused projection.
    wide = torch.randn(batch, seq, channels + 24, generator=g)
    w = torch.randn(channels, 4, generator=g)
    b = torch.randn(channels, generator=g)
    dy = torch.randn(batch, seq, channels, generator=g)
    out = {}
    for name, fn in (("ref", reference), ("triton", causal_conv1d)):
        wide_ = wide.clone().requires_grad_()
        w_, b_ = w.clone().requires_grad_(), b.clone().requires_grad_()
        y = fn(wide_[..., 8:8 + channels], w_, b_, silu)
        (y * dy).sum().backward()
        out[name] = {"y": y.detach(), "dx": wide_.grad, "dw": w_.grad, "db": b_.grad}
    return out


# (batch, sequence, width, groups): a power-of-two group width, others, one group; sequences
# across several backward programs (64 rows each) and shorter than a tile.
NORM_CASES = [(2, 37, 64, 2), (1, 130, 96, 3), (3, 3, 40, 1)]


def norm_case(batch, seq, width, groups):
    g = torch.Generator().manual_seed(seq * width)
    y = torch.randn(batch, seq, width, generator=g)
    wide = torch.randn(batch, seq, width + 20, generator=g)  # z: a slice of a wider last dim
    dout = torch.randn(batch, seq, width, generator=g)
    norm = GatedRMSNorm(width, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(width, generator=g))
    out = {}
    for name in ("ref", "triton"):
        y_, wide_ = y.clone().requires_grad_(), wide.clone().requires_grad_()
        norm.weight.grad = None
        z = wide_[..., 5:5 + width]
        o = norm(y_, z, n_groups=groups) if name == "ref" else gated_rms_norm(y_, z, norm.weight, groups, 1e-5)
        (o * dout).sum().backward()
        out[name] = {"out": o.detach(), "dy": y_.grad, "dz": wide_.grad, "dw": norm.weight.grad.clone()}
    return out


def mixer_case(compiled):
    u = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(3))
    out = {}
    for kernels in ("torch", "triton"):
        args = HybridLMArgs(dim=32, mamba_n_heads=4, mamba_head_dim=16, mamba_d_state=8, mamba_n_groups=2,
                            mamba_chunk_size=16, mamba_kernels=kernels,
                            layer_pattern="M")
        mixer = Mamba2Mixer(args)
        init_model_for_testing(mixer, 0)
        run = torch.compile(mixer) if compiled else mixer
        u_ = u.clone().requires_grad_()
        y = run(u_)
        y.square().sum().backward()
        out[kernels] = {"y": y.detach(), "du": u_.grad,
                        **{n: p.grad for n, p in mixer.named_parameters()}}
    return out


def main(path):
    results = {f"op_{b}x{s}x{c}_{'silu' if a else 'conv'}": op_case(b, s, c, a) for b, s, c, a in OP_CASES}
    # Other tiles: more programs along the sequence, each summing its own weight gradient.
    conv_triton.FWD_TILES = conv_triton.Tiles(rows=32, channels=64, warps=4)
    conv_triton.BWD_TILES = conv_triton.Tiles(rows=32, channels=64, warps=4, rows_per_program=64)
    results["op_2x70x200_silu_tiles"] = op_case(2, 70, 200, True)
    results["op_1x600x130_conv_tiles"] = op_case(1, 600, 130, False)
    conv_triton.FWD_TILES, conv_triton.BWD_TILES = DEFAULT_TILES
    results.update({f"norm_{b}x{s}x{w}_g{g}": norm_case(b, s, w, g) for b, s, w, g in NORM_CASES})
    results["mixer_eager"] = mixer_case(False)
    results["mixer_compiled"] = mixer_case(True)
    torch.save(results, path)


if __name__ == "__main__":
    main(sys.argv[1])
