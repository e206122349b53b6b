"""Host cost of the scan's custom ops (titan_mimo::ssd_forward / ssd_backward) against calling
their Python bodies directly, at hybrid_2b's layer shape (2 x 8192 tokens, 64 heads x 64, state
128, 8 groups, chunk 256, bf16). The device is synchronised before each call, so the time is the
host's alone (no full launch queue to wait on); median of 30 calls after 5 warm-ups. The
difference is the custom-op layer's cost; the bodies' own time is mamba-ssm's Triton launches.

Run on a GPU: python3 benchmarks/scan_op_overhead.py
"""

import statistics
import time

import torch

from titan_mimo.models.language import ssd_mamba_ssm
from titan_mimo.models.language.ssd_mamba_ssm import import_scan

B, S, H, P, N, G, CHUNK = 2, 8192, 64, 64, 128, 8, 256


def host_ms(fn, *args, calls=30, warmup=5) -> float:
    times = []
    for i in range(warmup + calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*args)
        t1 = time.perf_counter()
        if i >= warmup:
            times.append((t1 - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def main() -> None:
    print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
    import_scan()  # checks mamba-ssm and sets the ops' kernels
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, S, H, P, device="cuda", dtype=torch.bfloat16, generator=g)
    dt = torch.rand(B, S, H, device="cuda", generator=g) * 0.1 + 1e-3
    A = -torch.rand(H, device="cuda", generator=g) - 0.5
    Bm = torch.randn(B, S, G, N, device="cuda", dtype=torch.bfloat16, generator=g)
    Cm = torch.randn(B, S, G, N, device="cuda", dtype=torch.bfloat16, generator=g)
    D = torch.ones(H, device="cuda")
    dy = torch.randn_like(x)
    fwd_args = (x, dt, A, Bm, Cm, D, CHUNK, False)
    _, dt_chunked, dA_cumsum, states = ssd_mamba_ssm._ssd_forward(*fwd_args)
    bwd_args = (dy, x, dt, A, Bm, Cm, D, dt_chunked, dA_cumsum, states, CHUNK)
    for name, op in (("ssd_forward", ssd_mamba_ssm._ssd_forward), ("ssd_backward", ssd_mamba_ssm._ssd_backward)):
        args = fwd_args if name == "ssd_forward" else bwd_args
        via_op = host_ms(op._opoverload, *args)
        direct = host_ms(op._init_fn, *args)
        print(f"{name}: host per call {via_op:.3f} ms through the dispatcher, {direct:.3f} ms calling "
              "its body directly", flush=True)

if __name__ == "__main__":
    main()
