"""One MoE block, forward + backward: titan_mimo's `MoE` (Nemotron-H: sigmoid router with
correction bias, relu² experts on `torch._grouped_mm`, shared expert; compiled) against
torchtitan 0.2.2's MoE layer (SwiGLU experts on grouped GEMM, its Triton token permutation) at the
same widths, expert count, top-k and token count, bf16 parameters and input, balanced-ish routing
from a random router.

    python -m benchmarks.moe_layer [--tokens 8192] [--eager] [--profile] [--json PATH]

The peer runs eager ("torchtitan") and compiled ("torchtitan_compiled", where torch.compile takes
it); the table compares with the faster. --profile prints each layer's top GPU kernels over
3 more steps (where the time goes: router, permutation, grouped GEMM).

Shape (the reference's Nemotron-H MoE): dim 2688, 128 routed experts of width 1856, top-6, a
shared expert of width 3712 (torchtitan: 2 shared experts of 1856, one FeedForward of 3712).

FLOPs are each layer's own **active** matmul FLOPs x 3 (forward + backward): the router
(2·D·E per token), the k chosen experts and the shared expert. Ours has two matrices per expert
(up, down), torchtitan's three (SwiGLU's w1, w3, w2), so compare achieved TFLOP/s, not time.
With --tiny: ours alone on the looped path (a CPU check).
"""

import torch

from benchmarks import common
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language.moe import MoE

DIM, HIDDEN, EXPERTS, TOP_K, SHARED = 2688, 1856, 128, 6, 3712


def our_flops(tokens: int, d: int, f: int, e: int, k: int, shared: int) -> int:
    return 3 * tokens * (2 * d * e + k * 4 * d * f + 4 * d * shared)


def peer_flops(tokens: int, d: int, f: int, e: int, k: int, shared: int) -> int:
    return 3 * tokens * (2 * d * e + k * 6 * d * f + 6 * d * shared)


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--eager", action="store_true", help="leave our block uncompiled")
    p.add_argument("--profile", action="store_true", help="print each layer's top GPU kernels")
    opts = p.parse_args()
    device, dtype = common.device_and_dtype(opts.tiny)
    if opts.tiny:
        tokens, d, f, e, k, shared, backend = 64, 64, 32, 8, 2, 64, "torch"
    else:
        tokens, d, f, e, k, shared, backend = opts.tokens, DIM, HIDDEN, EXPERTS, TOP_K, SHARED, "grouped_mm"
    x = torch.randn(1, tokens, d, device=device, dtype=dtype, requires_grad=True)
    results = {}

    def measure(label: str, layer: torch.nn.Module, flops: int) -> None:
        def step():
            # Gradients start from none each step, as the trainer's do (zero_grad(set_to_none)):
            # accumulating into them would add a pass over every expert weight's gradient.
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).float().sum().backward()
        step_s, host_s = common.time_step(step, device, opts.warmup, opts.steps)
        results[label] = common.result(step_s, host_s, device, flops=flops, tokens=tokens)
        common.report(label, results[label])
        if opts.profile and device.type == "cuda":
            print_top_kernels(label, step)

    args = HybridLMArgs(dim=d, layer_pattern="E", n_routed_experts=e, n_experts_per_tok=k,
                        moe_intermediate_size=f, moe_shared_expert_intermediate_size=shared,
                        routed_scaling_factor=2.5, moe_backend=backend)
    ours = MoE(args)
    init_model_for_testing(ours, 0)
    ours = ours.to(device, dtype)
    ours.gate.float()  # the router's fp32 weight, as the trainer's FSDP unit gathers it
    if not (opts.eager or opts.tiny):
        ours.compile()
    measure("titan_mimo", ours, our_flops(tokens, d, f, e, k, shared))
    if device.type == "cuda" and not opts.tiny:
        from titan_mimo.torchtitan_ext.moe import build_peer_moe
        with torch.device(device), torch.no_grad():
            peer = build_peer_moe(dim=d, hidden=f, n_experts=e, top_k=k, n_shared=shared // f,
                                  route_scale=2.5)
            peer.init_weights(0.02, device)
        peer = peer.to(dtype)
        measure("torchtitan", peer, peer_flops(tokens, d, f, e, k, shared))
        peer.compile()
        try:
            measure("torchtitan_compiled", peer, peer_flops(tokens, d, f, e, k, shared))
        except Exception as e:  # the peer's own limits, reported, not ours to fix
            print(f"[torchtitan_compiled] torch.compile failed: {type(e).__name__}: {str(e)[:300]}")
        if "torchtitan_compiled" in results and results["torchtitan_compiled"]["step_s"] < results["torchtitan"]["step_s"]:
            results["torchtitan_eager"], results["torchtitan"] = results["torchtitan"], results.pop("torchtitan_compiled")
    common.write(results, opts.json)


def print_top_kernels(label: str, step, n: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    print(f"[{label}] top GPU kernels over 3 steps ({total / 3e3:.2f} ms/step of kernel time):")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:n]:
        print(f"  {e.self_device_time_total / 3e3:7.3f} ms  {100 * e.self_device_time_total / total:5.1f}%  "
              f"x{e.count // 3:<4d} {e.key[:110]}")


if __name__ == "__main__":
    main()
