"""Where mamba-ssm's SSD scan spends its device time, and what our backward and one change of
precision buy.

At hybrid_2b's layer shape (8192 tokens, 64 heads x 64, state 128, 8 groups, chunk 256, bf16),
for each batch size given (default 2 and 3), forward + backward of each variant named with
`--variants` (default: default,titan,titan_keep):

- "default": mamba-ssm's `mamba_chunk_scan_combined` as shipped. Its forward and backward each
  build CB = C·Bᵀ per chunk (`_bmm_chunk_fwd`, fp32, chunk² per group and chunk) which the scan
  kernels read once per head; its backward recomputes the chunk states and state passing;
- "titan": what `ssd_backend="mamba_ssm"` runs (`models/language/ssd_mamba_ssm.py`): the same
  kernels, no sum over a head split of one;
- "titan_keep": the same with `ssd_keep_states=True`: the forward's chunk states kept for the
  backward instead of recomputed;
- "cb_bf16": "default" with CB stored in bf16 (the kernels load it and widen to fp32 anyway; they
  round CB·decay·dt to bf16 before their tensor-core dot): half the bytes of the largest
  intermediate.

Prints device time per fwd+bwd (CUDA events over queued iterations), each kernel's time per
fwd+bwd (torch.profiler), and the relative error (‖a − ref‖ / ‖ref‖) of the output and every
gradient against the same scan run in float32.

Run on a GPU: python3 benchmarks/scan_variants.py [--variants a,b,...] [BATCH ...]
"""

import collections
import contextlib
import sys

import torch
from titan_mimo.models.language.ssd_mamba_ssm import import_scan
from torch.profiler import ProfilerActivity, profile

S, H, P, N, G, CHUNK = 8192, 64, 64, 128, 8, 256


def inputs(batch: int, dtype: torch.dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, S, H, P, device="cuda", generator=g)
    dt = torch.nn.functional.softplus(torch.randn(batch, S, H, device="cuda", generator=g) - 3)
    A = -torch.exp(torch.rand(H, device="cuda", generator=g) * 2)
    Bm = torch.randn(batch, S, G, N, device="cuda", generator=g) / N ** 0.5
    Cm = torch.randn(batch, S, G, N, device="cuda", generator=g) / N ** 0.5
    D = torch.ones(H, device="cuda")
    dy = torch.randn(batch, S, H, P, device="cuda", generator=g)
    args = [x.to(dtype), dt, A, Bm.to(dtype), Cm.to(dtype), D]
    return [a.requires_grad_() for a in args], dy.to(dtype)


@contextlib.contextmanager
def cb_dtype(dtype: torch.dtype | None):
    """Patch ssd_combined's CB builder to store CB in `dtype` (None: unchanged)."""
    module = sys.modules["mamba_ssm.ops.triton.ssd_combined"]
    original = module._bmm_chunk_fwd
    if dtype is not None:
        def patched(a, b, chunk_size, seq_idx=None, causal=False, output_dtype=None):
            return original(a, b, chunk_size, seq_idx=seq_idx, causal=causal, output_dtype=dtype)
        module._bmm_chunk_fwd = patched
    try:
        yield
    finally:
        module._bmm_chunk_fwd = original


def fwd_bwd(kernel, args, dy):
    for a in args:
        a.grad = None
    x, dt, A, Bm, Cm, D = args
    y = kernel(x, dt, A, Bm, Cm, CHUNK, D=D)
    y.backward(dy)
    return y


def device_ms(kernel, args, dy, iters=20) -> float:
    for _ in range(3):
        fwd_bwd(kernel, args, dy)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fwd_bwd(kernel, args, dy)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def kernel_ms(kernel, args, dy, iters=5) -> dict[str, float]:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fwd_bwd(kernel, args, dy)
        torch.cuda.synchronize()
    out = collections.Counter()
    for e in prof.key_averages():
        if e.self_device_time_total > 0:
            out[e.key[:60]] += e.self_device_time_total / iters / 1e3
    return out


def rel_errors(kernel, args, dy, ref) -> list[float]:
    y = fwd_bwd(kernel, args, dy)
    got = [y] + [a.grad for a in args]
    return [float((a.float() - b).norm() / b.norm()) for a, b in zip(got, ref)]


def main():
    argv = sys.argv[1:]
    variants = ["default", "titan", "titan_keep"]
    if argv[:1] == ["--variants"]:
        variants, argv = argv[1].split(","), argv[2:]
    batches = [int(b) for b in argv] or [2, 3]
    print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
    titan = import_scan(keep_states=False)
    titan_keep = import_scan(keep_states=True)
    kernel = sys.modules["mamba_ssm.ops.triton.ssd_combined"].mamba_chunk_scan_combined
    table = {"default": (kernel, None), "titan": (titan, None), "titan_keep": (titan_keep, None),
             "cb_bf16": (kernel, torch.bfloat16)}
    names = ["out", "dx", "ddt", "dA", "dB", "dC", "dD"]
    for batch in batches:
        args32, dy32 = inputs(batch, torch.float32)
        y = fwd_bwd(kernel, args32, dy32)
        ref = [y.detach()] + [a.grad.detach().clone() for a in args32]
        del args32, dy32, y
        args, dy = inputs(batch, torch.bfloat16)
        per_kernel = {}
        for name in variants:
            fn, dtype = table[name]
            with cb_dtype(dtype):
                ms = device_ms(fn, args, dy)
                errs = rel_errors(fn, args, dy, ref)
                per_kernel[name] = kernel_ms(fn, args, dy)
            print(f"batch {batch} {name}: {ms:.3f} ms per fwd+bwd; rel. error vs fp32: "
                  + ", ".join(f"{n} {e:.2e}" for n, e in zip(names, errs)), flush=True)
        first = per_kernel[variants[0]]
        keys = sorted(set().union(*per_kernel.values()), key=lambda k: -first.get(k, 0))
        print(f"batch {batch}: kernel time per fwd+bwd (ms), " + " | ".join(variants))
        for k in keys:
            print("  " + " | ".join(f"{per_kernel[v].get(k, 0):7.3f}" for v in variants) + f"  {k}")
        print("  " + " | ".join(f"{sum(per_kernel[v].values()):7.3f}" for v in variants) + "  total",
              flush=True)
        del ref, args, dy
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
