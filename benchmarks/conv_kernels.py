"""The Mamba2 mixer's three causal convs + SiLU (x, B and C: slices of the fused in-projection's
output), forward + backward, at hybrid_2b's layer shape (4096 + 1024 + 1024 channels, rows of
10304, 3 x 8192 tokens, bf16): `mamba_kernels = "torch"` (the shifted-sum conv, compiled, as a
compiled block runs it) against "triton" (`models/language/conv_triton.py`), same process.

    python -m benchmarks.conv_kernels [--batch 3] [--seq 8192] [--sweep] [--json PATH]

`--sweep` also times the Triton kernels at other tile shapes (`conv_triton.Tiles`) and prints
each one's forward and backward device time (and writes them under "sweep" in the JSON): how the
defaults were chosen. Bytes moved by the
ideal kernels (read x, write y; read x and dy, write dx) over the time give the GB/s printed.
FLOPs are not counted (the convs are memory-bound): MFU is n/a.
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
from titan_mimo.models.language.mamba2 import DepthwiseCausalConv1d

WIDTHS = (4096, 1024, 1024)
"""hybrid_2b's x, B and C channels (64 heads x 64; 8 groups x state 128)."""
Z_WIDTH, DT_WIDTH = 4096, 64


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--sweep", action="store_true", help="also time other tile shapes of the Triton kernels")
    opts = p.parse_args()
    device, dtype = common.device_and_dtype(opts.tiny)
    batch, seq, widths = (opts.batch, opts.seq, WIDTHS) if not opts.tiny else (2, 64, (32, 16, 16))
    convs = [DepthwiseCausalConv1d(c, 4) for c in widths]
    g = torch.Generator().manual_seed(0)
    for conv in convs:
        conv.init_param("weight", conv.weight.data, g)
        conv.init_param("bias", conv.bias.data, g)
    convs = [conv.to(device) for conv in convs]  # fp32 weights under autocast, as on one rank
    wide = torch.randn(batch, seq, Z_WIDTH + sum(widths) + DT_WIDTH, device=device, dtype=dtype)
    offsets = list(itertools.accumulate((Z_WIDTH, *widths)))[:-1]
    # Each conv's input: a leaf view of its slice (row stride 10304), so the timed backward is the
    # convs' alone (no gradient of the whole projection to assemble).
    xs = [wide[..., o:o + c].detach().requires_grad_() for o, c in zip(offsets, widths)]
    dys = [torch.randn(batch, seq, c, device=device, dtype=dtype) for c in widths]
    moved = sum(2 * batch * seq * c * wide.element_size() for c in widths)  # forward's ideal bytes

    def torch_convs():
        return [F.silu(conv._shifted_sum(x)) for conv, x in zip(convs, xs)]

    def triton_convs():
        return [conv_triton.causal_conv1d(x, conv.weight[:, 0, :], conv.bias) for conv, x in zip(convs, xs)]

    results = {}
    runs = {"torch": torch.compile(torch_convs) if not opts.tiny else torch_convs}
    if device.type == "cuda":
        runs["triton"] = triton_convs
    for label, fn in runs.items():
        def step():
            for t in (*xs, *(p for conv in convs for p in conv.parameters())):
                t.grad = None
            torch.autograd.backward(fn(), dys)
        step_s, host_s = common.time_step(step, device, opts.warmup, opts.steps)
        results[label] = common.result(step_s, host_s, device, flops=0, tokens=batch * seq)
        results[label]["mfu"] = None
        gbs = 2.5 * moved / statistics.fmean(step_s) / 1e9  # fwd: 2 passes, bwd: 3
        print(f"[{label}] fwd+bwd {statistics.fmean(step_s) * 1e3:.3f} ms ({gbs:,.0f} GB/s of the ideal traffic)",
              flush=True)
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
