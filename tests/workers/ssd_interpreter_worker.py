"""Runs our scan around mamba-ssm's Triton SSD kernels (`ssd_mamba_ssm`), mamba-ssm's own
`mamba_chunk_scan_combined` and the pure-PyTorch reference `ssd_chunked` on CPU, the kernels under
Triton's interpreter, and saves every output and gradient for tests/models/test_ssd_mamba_ssm.py.

TRITON_INTERPRET=1 must be set before triton is imported (its own @triton.jit helpers such as
tl.cumsum are made at import), hence a separate process. The autotuner is told every config takes
the same time (so it keeps the first) and the CUDA device queries are stubbed. Float32 only: the
interpreter's bf16 dots give garbage for mamba-ssm's own backward too (ddt ~1e20); bf16 is checked
on the GPU (tests/models/test_ssd_kernels.py, benchmarks/scan_variants.py).

Usage: TRITON_INTERPRET=1 python tests/workers/ssd_interpreter_worker.py OUT.pt [MAMBA_SRC]
"""

import collections
import contextlib
import logging
import os
import sys
import types

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2])

import torch
from titan_mimo.models.language import ssd_mamba_ssm
from titan_mimo.models.language.ssd import ssd_chunked
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime import autotuner

SM_COUNT = [8]
autotuner.Autotuner._bench = lambda self, *a, config, **k: [1.0, 1.0, 1.0]
torch.cuda.device = lambda index: contextlib.nullcontext()
torch.cuda.get_device_properties = lambda device: types.SimpleNamespace(
    multi_processor_count=SM_COUNT[0])


def inputs(seed, b=1, s=80, h=4, p=16, g=2, n=16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, s, h, p, generator=gen)
    dt = torch.rand(b, s, h, generator=gen) * 0.2 + 0.01
    A = -(torch.rand(h, generator=gen) + 0.5)
    B = torch.randn(b, s, g, n, generator=gen)
    C = torch.randn(b, s, g, n, generator=gen)
    D = torch.randn(h, generator=gen)
    dy = torch.randn(b, s, h, p, generator=gen)
    # dt, A and D stay float32, as Mamba2Mixer passes them.
    return [x.to(dtype), dt, A, B.to(dtype), C.to(dtype), D], dy.to(dtype)


def run(fn, args, dy, chunk_size):
    """y and every gradient of fn(x, dt, A, B, C, chunk_size, D)."""
    leaves = [t.clone().requires_grad_() for t in args]
    x, dt, A, B, C, D = leaves
    y = fn(x, dt, A, B, C, chunk_size, D)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]


RECOMPUTED = ("_chunk_cumsum_fwd", "_chunk_state_fwd", "_state_passing_fwd")


def counted(f, name, calls):
    def wrapper(*a, **k):
        calls[name] += 1
        return f(*a, **k)
    return wrapper


BODIES = {op._opoverload: op._init_fn for op in (ssd_mamba_ssm._ssd_forward,
                                                  ssd_mamba_ssm._ssd_backward)}


class AtenOps(TorchDispatchMode):
    """Counts the aten ops run, including those inside our custom ops (their Python bodies are
    run with the mode still active instead of dispatching them as one op)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__ + "." + func._overloadname] += 1
        if func in BODIES:
            with self:
                return BODIES[func](*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def main() -> None:
    keep = ssd_mamba_ssm.import_scan(keep_states=True)
    module = sys.modules[ssd_mamba_ssm.SSD_COMBINED_MODULE]
    recompute = ssd_mamba_ssm.scan_function(module, keep_states=False)
    stock = module.mamba_chunk_scan_combined
    out = {"check": ssd_mamba_ssm._Kernels().check(), "ours_is_stock": stock in (keep, recompute)}
    cases = {
        # 1 SM: all heads of a group in one program, a split of one taken as a view; 64 SMs:
        # one head per program, so dB, dC and dCB are still summed over the splits. s = 80 with
        # chunk 32 leaves a ragged last chunk.
        "fp32_split1": {"sm": 1, "seed": 0, "kw": {}},
        "fp32_splits": {"sm": 64, "seed": 0, "kw": {}},
        "deterministic": {"sm": 64, "seed": 2, "kw": {"s": 64, "g": 1}, "det": True},
    }
    for name, case in cases.items():
        SM_COUNT[0] = case["sm"]
        os.environ["MAMBA_DETERMINISTIC"] = "1" if case.get("det") else "0"
        args, dy = inputs(case["seed"], **case["kw"])
        out[name] = {
            "keep": run(keep, args, dy, 32),
            "recompute": run(recompute, args, dy, 32),
            "stock": run(stock, args, dy, 32),
            "ref": run(ssd_chunked, [t.float() for t in args], dy.float(), 32),
        }
    os.environ.pop("MAMBA_DETERMINISTIC")


    # What each backward launches, at a split of one: the forward's helpers mamba-ssm calls
    # again (counted where ssd_combined calls them) and the aten sums.
    SM_COUNT[0] = 1
    args, dy = inputs(0)
    for label in ("keep", "recompute", "stock"):
        calls = collections.Counter()
        originals = {n: getattr(module, n) for n in RECOMPUTED}
        for n, f in originals.items():
            setattr(module, n, counted(f, n, calls))
        try:
            # Built after the patch: our scan takes mamba-ssm's helpers from ssd_combined.
            fn = stock if label == "stock" else ssd_mamba_ssm.scan_function(module, label == "keep")
            with AtenOps() as ops:
                run(fn, args, dy, 32)
        finally:
            for n, f in originals.items():
                setattr(module, n, f)
        out[f"calls_{label}"] = dict(calls)
        out[f"sums_{label}"] = ops.counts["sum.dim_IntList"]

    # The custom ops' fake versions, schemas and autograd registration against their real runs.
    SM_COUNT[0] = 1
    args, dy = inputs(3, s=64)
    x, dt, A, B, C, D = (t.clone().requires_grad_() for t in args)
    for keep_states in (False, True):
        fwd_args = (x, dt, A, B, C, D, 32, keep_states)
        torch.library.opcheck(ssd_mamba_ssm._ssd_forward, fwd_args,
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))
        _, dt_chunked, dA_cumsum, states = ssd_mamba_ssm._ssd_forward(*fwd_args)
        plain = [t.detach() for t in (dy, x, dt, A, B, C, D, dt_chunked, dA_cumsum, states)]
        torch.library.opcheck(ssd_mamba_ssm._ssd_backward, (*plain, 32),
                              test_utils=("test_schema", "test_faketensor"))
    # Without D (no skip connection): dD comes back as an empty tensor, its gradient as None.
    torch.library.opcheck(ssd_mamba_ssm._ssd_forward, (x, dt, A, B, C, None, 32, False),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    y = ssd_mamba_ssm.ssd_scan(x, dt, A, B, C, 32, None)
    y.backward(dy)
    out["no_D_grads"] = [t.grad is not None for t in (x, dt, A, B, C)] + [D.grad is None]
    out["opcheck"] = True

    # One graph under torch.compile (fullgraph: a graph break raises), same numbers as eager.
    def block(x, dt, A, B, C, chunk_size, D):
        silu = torch.nn.functional.silu
        return keep(silu(x), dt, A, silu(B), silu(C), chunk_size, D) * 2.0

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out["compiled"] = run(compiled, args, dy, 32)
    out["eager"] = run(block, args, dy, 32)

    # The ops set their kernels up on first use when no mixer did (a graph from a compile cache).
    ssd_mamba_ssm._KERNELS = None
    lazy = ssd_mamba_ssm.ssd_scan(*[t.detach() for t in (x, dt, A, B, C)], 32, D.detach())
    out["lazy_setup"] = ssd_mamba_ssm._KERNELS is not None and lazy.shape == x.shape

    # A kernel whose signature changed: mamba-ssm's own function, with a warning.
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(ssd_mamba_ssm.__name__).addHandler(handler)
    ssd_mamba_ssm._DCB_ARGS = ssd_mamba_ssm._DCB_ARGS + ("new_arg",)
    fallback = ssd_mamba_ssm.scan_function(module)
    out["fallback_is_stock"] = fallback is stock
    out["fallback_log"] = [r.getMessage() for r in records]
    # ... and our ops, called anyway, say why they cannot run.
    ssd_mamba_ssm._KERNELS = None
    try:
        ssd_mamba_ssm.ssd_scan(*[t.detach() for t in (x, dt, A, B, C)], 32, D.detach())
        out["ops_after_fallback"] = "ran"
    except RuntimeError as e:
        out["ops_after_fallback"] = str(e)
    torch.save(out, sys.argv[1])


if __name__ == "__main__":
    main()
