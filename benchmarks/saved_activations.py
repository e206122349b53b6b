"""What one compiled hybrid_2b block keeps for its backward, per token, on CPU.

    python benchmarks/saved_activations.py [--seq 256] [--kind M|-|*] [--budget 0.85]
        [--scan custom_op|function] [--keep-states]

Builds one block of `hybrid_lm/hybrid_2b` in bf16, compiles it with
`aot_eager_decomp_partition` (Inductor's forward/backward partitioner without code generation,
so it runs in seconds on CPU) and lists the tensors its forward saves (saved-tensor hooks, one
entry per storage), excluding parameters and the block's input. The Mamba2 scan computes
nothing: `--scan custom_op` (default, what ssd_backend="mamba_ssm" runs) puts CPU kernels that
return zeros behind titan_mimo's `ssd_forward` / `ssd_backward` ops, traced into the block's one
graph (`--keep-states` for ssd_keep_states); `--scan function` is an autograd Function saving what
mamba-ssm's own `mamba_chunk_scan_combined` saves, behind a graph break (the fallback for a
mamba-ssm whose kernels do not match). `--budget` sets torch.compile's activation memory budget
(the trainer's activation_checkpoint = "memory_budget").
"""

import argparse

import torch

from titan_mimo.compat import scope_activation_memory_budget
from titan_mimo.models import build_model
from titan_mimo.profiling import saved_for_backward


class _StubScan(torch.autograd.Function):
    """Saves what mamba-ssm's scan saves (out, x, dt, dA_cumsum, A, B, C, D); zero gradients."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, D):
        out = torch.empty_like(x)
        b, s, h = dt.shape
        dA_cumsum = torch.empty(b, h, -(-s // chunk_size), chunk_size, dtype=torch.float32)
        ctx.save_for_backward(out, x, dt, dA_cumsum, A, B, C, D)
        return out

    @staticmethod
    def backward(ctx, dout):
        _, x, dt, _, A, B, C, D = ctx.saved_tensors
        return (torch.zeros_like(x), torch.zeros_like(dt), torch.zeros_like(A), torch.zeros_like(B),
                torch.zeros_like(C), None, torch.zeros_like(D))


@torch.compiler.disable
def _stub_scan(x, dt, A, B, C, chunk_size, D=None):
    return _StubScan.apply(x, dt, A, B, C, chunk_size, D)


def _stub_custom_ops(keep_states: bool):
    """titan_mimo's scan ops with CPU kernels that return zeros of the real shapes."""
    import functools

    from titan_mimo.models.language import ssd_mamba_ssm as ops

    def forward(x, dt, A, B, C, D, chunk_size, keep):
        b, s, h, p = x.shape
        c = -(-s // chunk_size)
        chunked = torch.zeros(b, h, c, chunk_size, dtype=torch.float32)
        states = torch.zeros(b, c, h, p, B.shape[-1], dtype=C.dtype) if keep else C.new_empty(0)
        return torch.zeros_like(x), chunked, chunked.clone(), states

    def backward(dout, x, dt, A, B, C, D, dt_chunked, dA_cumsum, states, chunk_size):
        return (torch.zeros_like(x), torch.zeros_like(dt), torch.zeros_like(A), torch.zeros_like(B),
                torch.zeros_like(C), torch.zeros_like(D) if D is not None else A.new_empty(0))

    ops._ssd_forward.register_kernel("cpu", forward)
    ops._ssd_backward.register_kernel("cpu", backward)
    return functools.partial(ops.ssd_scan, keep_states=keep_states)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--kind", choices=["M", "-", "*"], default="M")
    p.add_argument("--budget", type=float, default=None)
    p.add_argument("--scan", choices=["custom_op", "function"], default="custom_op")
    p.add_argument("--keep-states", action="store_true")
    args = p.parse_args()
    model = build_model("hybrid_lm/hybrid_2b")
    pattern = model.args.layer_pattern
    block = model.layers[str(pattern.index(args.kind))].to_empty(device="cpu").to(torch.bfloat16)
    for param in block.parameters():
        with torch.no_grad():
            param.normal_(0, 0.02)
    if args.kind == "M":
        block.mixer.ssd = _stub_scan if args.scan == "function" else _stub_custom_ops(args.keep_states)
    if args.budget is not None:
        scope_activation_memory_budget(block, args.budget)
    block.compile(backend="aot_eager_decomp_partition")
    x = torch.randn(1, args.seq, model.args.dim, dtype=torch.bfloat16, requires_grad=True)
    names = {p.untyped_storage().data_ptr(): n for n, p in block.named_parameters()}
    names[x.untyped_storage().data_ptr()] = "block input"
    y, kept = saved_for_backward(block, x)
    y.float().sum().backward()
    per_token, weights = 0, 0
    for ptr, (nbytes, dtype, shapes) in sorted(kept.items(), key=lambda kv: -kv[1][0]):
        shape, name = shapes[0], names.get(ptr)
        is_weight = name is None and len(shape) == 2 and args.seq not in shape
        if name is None and not is_weight:
            per_token += nbytes
        elif is_weight:
            weights += nbytes
        label = name or ("a weight-shaped copy" if is_weight else f"{nbytes / args.seq:.0f} B/token")
        print(f"  {shape} {str(dtype).replace('torch.', '')}: {label}")
    print(f"block {args.kind!r}, budget {args.budget}: {per_token / args.seq / 1e3:.1f} KB of activations "
          f"per token, {weights / 2**20:.0f} MiB of weight-shaped copies")


if __name__ == "__main__":
    main()
