"""(Ran in device call F4 at commit e9adc87, whose custom ops were then reverted: at later commits
both modes below are the graph-break path.)

A/B of how a compiled Mamba2 mixer calls mamba-ssm's scan, at hybrid_2b's layer shape
(d_model 2048, 64 heads x 64, state 128, 8 groups, chunk 256; 2 x 8192 tokens, bf16):

- "op": the scan as titan_mimo's custom ops (what `ssd_backend="mamba_ssm"` does): one graph;
- "break": mamba-ssm's own autograd.Function behind `torch.compiler.disable` (the code before
  the custom ops): two graphs per mixer with the scan run eagerly between them.

Prints device time per fwd+bwd (CUDA events), host time to issue one, and every kernel's time
per iteration for both, side by side. Run on a GPU: python3 benchmarks/mixer_scan_ab.py
"""

import collections
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language.mamba2 import Mamba2Mixer
from titan_mimo.models.language.ssd_kernels import _import_mamba_chunk_scan

ARGS = HybridLMArgs(dim=2048, mamba_n_heads=64, mamba_head_dim=64, mamba_d_state=128, mamba_n_groups=8,
                    mamba_chunk_size=256, ssd_backend="mamba_ssm", layer_pattern="M")


def build(mode: str):
    mixer = Mamba2Mixer(ARGS)
    init_model_for_testing(mixer, 0)
    if mode == "break":
        kernel = _import_mamba_chunk_scan()

        @torch.compiler.disable
        def scan(x, dt, A, B, C, chunk_size, D=None):
            return kernel(x, dt, A, B, C, chunk_size, D=D)

        mixer.ssd = scan
    return torch.compile(mixer.cuda().bfloat16())


def run(mode: str, u, dy, iters: int = 20) -> dict[str, float]:
    mixer = build(mode)

    def step():
        mixer(u).backward(dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    host = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        host.append((time.perf_counter() - t) * 1e3)
    torch.cuda.synchronize()
    n_prof = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n_prof):
            step()
        torch.cuda.synchronize()
    kernels = collections.Counter()
    for e in prof.key_averages():
        if e.self_device_time_total > 0:
            kernels[e.key] += e.self_device_time_total / n_prof / 1e3
    print(f"{mode}: {start.elapsed_time(end) / iters:.3f} ms per fwd+bwd; host to issue one: median "
          f"{statistics.median(host):.3f} ms; kernel sum {sum(kernels.values()):.3f} ms", flush=True)
    return kernels


def main():
    print("torch", torch.__version__, torch.cuda.get_device_name())
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(2, 8192, ARGS.dim, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    dy = torch.randn(2, 8192, ARGS.dim, device="cuda", dtype=torch.bfloat16, generator=g)
    results = {mode: run(mode, u, dy) for mode in ("op", "break", "op")}
    op, brk = results["op"], results["break"]  # the second "op" run (warm) is the one kept
    print(f"{'op ms':>8} {'break ms':>9}  kernel (per fwd+bwd)")
    for name in sorted(set(op) | set(brk), key=lambda k: -max(op.get(k, 0), brk.get(k, 0))):
        print(f"{op.get(name, 0):8.3f} {brk.get(name, 0):9.3f}  {name[:110]}")


if __name__ == "__main__":
    main()
