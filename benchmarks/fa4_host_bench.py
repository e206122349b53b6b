"""Host cost of one attention call: SDPA against FlashAttention-4 (titan_mimo's fa4 custom ops).

At a tiny shape the device work is negligible, so the time to issue N forward (and forward +
backward) calls back to back is the Python/launch overhead per call; a cProfile of the FA4 calls
shows where it goes.

    python3 benchmarks/fa4_host_bench.py [--calls 200]
"""

import argparse
import cProfile
import pstats
import time

import torch

from titan_mimo.models import attention_kernels as ak


def host_ms(fn, calls: int) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    issued = time.perf_counter() - start
    torch.cuda.synchronize()
    return issued / calls * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    q, k, v = (torch.randn(1, 128, 2, 80, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn_like(q)
    fa4 = ak.attention_function("fa4")
    for name, attend in (("sdpa", ak.attend_sdpa), ("fa4", fa4)):
        fwd = host_ms(lambda: attend(q, k, v, is_causal=False), args.calls)
        both = host_ms(lambda: torch.autograd.grad(attend(q, k, v, is_causal=False), (q, k, v), grad),
                       args.calls)
        print(f"{name:5s} host per call: forward {fwd:.3f} ms, forward+backward {both:.3f} ms", flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(50):
        torch.autograd.grad(fa4(q, k, v, is_causal=False), (q, k, v), grad)
    profiler.disable()
    torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
