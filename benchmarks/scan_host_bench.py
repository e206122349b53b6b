"""Host cost of mamba-ssm's SSD scan (`mamba_chunk_scan_combined`) at hybrid_2b's layer shape
(2 x 8192 tokens, 64 heads x 64, state 128, 8 groups, chunk 256), forward + backward:

- device time per fwd+bwd (CUDA events over queued iterations),
- host time to issue one fwd+bwd (the queue is short, so the host never blocks on it),
- a cProfile of the host side (where the Python goes: Triton's launcher, the wrapper's ops),
- whether `torch.compile(fullgraph=True)` can trace the scan (Triton kernels inside the graph
  launch through Inductor's own launcher), and its host and device time if it can.

Run on a GPU: python -m benchmarks.scan_host_bench
"""

import cProfile
import io
import pstats
import statistics
import time
import traceback

import torch

from benchmarks.common import seconds_per_call
from titan_mimo.models.language.ssd_mamba_ssm import import_scan

B, S, H, P, N, G, CHUNK = 2, 8192, 64, 64, 128, 8, 256


def inputs():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, S, H, P, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    dt = (torch.rand(B, S, H, device="cuda", generator=g) * 0.1 + 1e-3).requires_grad_()
    A = (-torch.rand(H, device="cuda", generator=g) - 0.5).requires_grad_()
    Bm = torch.randn(B, S, G, N, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    Cm = torch.randn(B, S, G, N, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    D = torch.ones(H, device="cuda").requires_grad_()
    dy = torch.randn(B, S, H, P, device="cuda", dtype=torch.bfloat16, generator=g)
    return (x, dt, A, Bm, Cm, D), dy


def measure(name, scan, args, dy, iters=20):
    def step():
        y = scan(*args)
        y.backward(dy)

    device_ms = 1e3 * seconds_per_call(step, torch.device("cuda"), calls=iters)
    host = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        host.append((time.perf_counter() - t) * 1e3)
    torch.cuda.synchronize()
    print(f"{name}: {device_ms:.3f} ms per fwd+bwd queued back to back; host to issue one: "
          f"median {statistics.median(host):.3f} ms (min {min(host):.3f})", flush=True)
    return step


def main():
    print("torch", torch.__version__, torch.cuda.get_device_name())
    kernel = import_scan()
    args, dy = inputs()

    def eager(x, dt, A, Bm, Cm, D):
        return kernel(x, dt, A, Bm, Cm, CHUNK, D=D)

    step = measure("eager mamba_chunk_scan_combined", eager, args, dy)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(10):
        step()
    prof.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    print("cProfile, 10 x fwd+bwd, by own time:\n" + out.getvalue()[-6000:], flush=True)

    try:
        compiled = torch.compile(eager, fullgraph=True)
        measure("torch.compile(fullgraph=True)", compiled, args, dy)
    except Exception:  # a benchmark probe: report why it cannot trace and go on
        print("torch.compile(fullgraph=True) failed:\n" + traceback.format_exc()[-3000:], flush=True)


if __name__ == "__main__":
    main()
