"""The Mamba2 mixer's elementwise kernels, forward + backward, at hybrid_2b's layer shape (3 x 8192
tokens, bf16, fp32 weights as on one rank), each compiled from PyTorch (as a compiled block runs
it, `mamba_kernels = "torch"`) against titan_mimo's Triton kernels (`mamba_kernels = "triton"`),
in one process:

- "conv": the three causal convs + SiLU on x, B and C (4096 + 1024 + 1024 channels, strided
  slices of the fused in-projection's output, rows of 10304): the shifted-sum conv against
  `models/language/conv_triton.py`;
- "norm": the gated RMSNorm (4096 channels in 8 groups, z a slice of the projection):
  `GatedRMSNorm` against `gated_norm_triton.py`.

    python -m benchmarks.mamba_kernels [--batch 3] [--seq 8192] [--sweep] [--json PATH]

Results are labelled "<part>_<kernel>" (conv_torch, conv_triton, norm_torch, norm_triton). Each
prints its GB/s against the bytes the ideal kernels move (conv: read x, write y; read x and dy,
write dx. norm: read y and z, write out; read y, z and dout, write dy and dz). FLOPs are not
counted (memory-bound kernels): MFU is n/a. `--sweep` also times the conv kernels at other tile
shapes (`conv_triton.Tiles`), printed and written under "sweep" in the JSON: how the defaults
were chosen.
"""

import dataclasses
import itertools
import statistics

import torch
import torch.nn.functional as F
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

from benchmarks import common
from titan_mimo.models.language import conv_triton
from titan_mimo.models.language.gated_norm_triton import gated_rms_norm
from titan_mimo.models.language.mamba2 import DepthwiseCausalConv1d, GatedRMSNorm

WIDTHS = (4096, 1024, 1024)
"""hybrid_2b's x, B and C channels (64 heads x 64; 8 groups x state 128)."""
Z_WIDTH, DT_WIDTH, GROUPS = 4096, 64, 8


def timed(label: str, step, device, opts, tokens: int, ideal_bytes: int, results: dict) -> None:
    step_s, host_s = common.time_step(step, device, opts.warmup, opts.steps)
    results[label] = common.result(step_s, host_s, device, flops=0, tokens=tokens)
    results[label]["mfu"] = None
    ms = statistics.fmean(step_s) * 1e3
    print(f"[{label}] fwd+bwd {ms:.3f} ms ({ideal_bytes / ms / 1e6:,.0f} GB/s of the ideal traffic)", flush=True)


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--sweep", action="store_true", help="also time other tile shapes of the Triton convs")
    opts = p.parse_args()
    device, dtype = common.device_and_dtype(opts.tiny)
    batch, seq, widths = (opts.batch, opts.seq, WIDTHS) if not opts.tiny else (2, 64, (32, 16, 16))
    z_width = Z_WIDTH if not opts.tiny else 32
    g = torch.Generator().manual_seed(0)
    convs = [DepthwiseCausalConv1d(c, 4) for c in widths]
    for conv in convs:
        conv.init_param("weight", conv.weight.data, g)
        conv.init_param("bias", conv.bias.data, g)
    convs = [conv.to(device) for conv in convs]
    norm = GatedRMSNorm(z_width, 1e-5).to(device)
    wide = torch.randn(batch, seq, z_width + sum(widths) + DT_WIDTH, device=device, dtype=dtype)
    offsets = list(itertools.accumulate((z_width, *widths)))[:-1]
    # Leaf views of the projection's slices (row stride of the whole projection), so the timed
    # backward is the kernels' own (no gradient of the whole projection to assemble).
    xs = [wide[..., o:o + c].detach().requires_grad_() for o, c in zip(offsets, widths)]
    z = wide[..., :z_width].detach().requires_grad_()
    y = torch.randn(batch, seq, z_width, device=device, dtype=dtype, requires_grad=True)
    dys = [torch.randn(batch, seq, c, device=device, dtype=dtype) for c in widths]
    dout = torch.randn(batch, seq, z_width, device=device, dtype=dtype)
    size = wide.element_size() * batch * seq
    conv_bytes, norm_bytes = 5 * size * sum(widths), 8 * size * z_width

    parts = {
        "conv": (lambda k: [F.silu(c._shifted_sum(x)) if k == "torch"
                            else conv_triton.causal_conv1d(x, c.weight[:, 0, :], c.bias) for c, x in zip(convs, xs)],
                 dys, [*xs, *(q for c in convs for q in c.parameters())], conv_bytes),
        "norm": (lambda k: [norm(y, z, n_groups=GROUPS) if k == "torch"
                            else gated_rms_norm(y, z, norm.weight, GROUPS, norm.eps)],
                 [dout], [y, z, norm.weight], norm_bytes),
    }
    results = {}
    for part, (fn, grads, leaves, ideal) in parts.items():
        for kernel in ("torch", "triton") if device.type == "cuda" else ("torch",):
            run = (lambda fn=fn, kernel=kernel: fn(kernel))
            run = torch.compile(run) if kernel == "torch" and not opts.tiny else run

            def step(run=run, grads=grads, leaves=leaves):
                for t in leaves:
                    t.grad = None
                torch.autograd.backward(run(), grads)
            timed(f"{part}_{kernel}", step, device, opts, batch * seq, ideal, results)
    if opts.sweep and device.type == "cuda":
        results["sweep"] = sweep(xs, convs, dys, device)
    common.write(results, opts.json)


FWD_SWEEP = [(8, 256, 4), (16, 128, 4), (16, 256, 2), (16, 256, 4), (16, 512, 4), (32, 128, 4)]
"""(rows, channels, warps) of the forward tiles `--sweep` times."""
BWD_SWEEP = [(16, 64, 8), (16, 128, 4), (16, 128, 8), (32, 64, 4), (32, 128, 4), (32, 128, 8)]
"""(rows, channels, warps) of the backward tiles `--sweep` times (256 rows per program). On an
H200 16 x 128 x 4 and 16 x 64 x 8 were best (1.0 ms); 32 x 256 with 4 warps spills (8 ms). Two
other backward kernels lost there and were removed: summing the weight gradient over each
tile's rows as it goes (2-2.5x slower: a cross-warp reduction per tile), and computing each
row's SiLU gradient once and shifting it within the tile with `tl.gather` (1.02-1.40 ms)."""


def sweep(xs, convs, dys, device) -> dict[str, list]:
    """Forward and backward device time (ms) of the Triton convs at each tile shape:
    {"fwd": [[tiles, ms], ...], "bwd": [...]}, tiles as `conv_triton.Tiles` fields."""
    defaults = conv_triton.FWD_TILES, conv_triton.BWD_TILES
    xs = [x.detach() for x in xs]
    ws = [(conv.weight.detach()[:, 0, :], conv.bias.detach()) for conv in convs]
    fwd_op, bwd_op = torch.ops.titan_mimo.causal_conv1d_fwd, torch.ops.titan_mimo.causal_conv1d_bwd
    out = {"fwd": [], "bwd": []}
    for rows, channels, warps in FWD_SWEEP:
        conv_triton.FWD_TILES = conv_triton.Tiles(rows=rows, channels=channels, warps=warps)
        ms = 1e3 * common.seconds_per_call(lambda: [fwd_op(x, w, b, True) for x, (w, b) in zip(xs, ws)], device)
        print(f"  fwd {conv_triton.FWD_TILES}: {ms:.3f} ms", flush=True)
        out["fwd"].append([dataclasses.asdict(conv_triton.FWD_TILES), ms])
    for rows, channels, warps in BWD_SWEEP:
        conv_triton.BWD_TILES = conv_triton.Tiles(rows=rows, channels=channels, warps=warps, rows_per_program=256)
        try:
            ms = 1e3 * common.seconds_per_call(
                lambda: [bwd_op(dy, x, w, b, True) for dy, x, (w, b) in zip(dys, xs, ws)], device)
        except (OutOfResources, CompilationError) as e:  # a tile shape this Triton cannot build
            print(f"  bwd {conv_triton.BWD_TILES}: not built ({type(e).__name__}: {str(e)[:300]})", flush=True)
            continue
        print(f"  bwd {conv_triton.BWD_TILES}: {ms:.3f} ms", flush=True)
        out["bwd"].append([dataclasses.asdict(conv_triton.BWD_TILES), ms])
    conv_triton.FWD_TILES, conv_triton.BWD_TILES = defaults
    return out


if __name__ == "__main__":
    main()
