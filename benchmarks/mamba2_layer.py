"""One Mamba2 layer, forward + backward: titan_mimo's `Mamba2Mixer` (compiled, mamba-ssm's Triton
scan as its custom ops: what `ssd_backend = "mamba_ssm"` trains with) against mamba-ssm's own
`Mamba2` layer (`use_mem_eff_path=False`: its fused path needs causal-conv1d's CUDA extension), ours
twice on CUDA: with `mamba_kernels = "torch"` (the compiled conv and norm) and "triton" (ours), at
hybrid_2b's layer shape (d_model 2048, 64 heads x 64, state 128, 8 groups, chunk 256), bf16
parameters and input, 2 x 8192 tokens. Both run in one process, so mamba-ssm's Triton autotuning
(~2 min on first use) is paid once.

    python -m benchmarks.mamba2_layer [--batch 2] [--seq 8192] [--eager] [--json PATH]

FLOPs: one formula for both (in/out projections 6·B·L·(d·d_in + 2·d²) plus the chunked scan's
matmuls 3·B·L·H·(2·chunk·N + 2·chunk·P + 4·N·P)), so the ratio of their TFLOP/s is the ratio of
their times. Needs mamba-ssm (the `gpu` extra) and a GPU for the peer; with --tiny, ours alone on
the torch scan.
"""

import torch

from benchmarks import common
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language.mamba2 import Mamba2Mixer

D_MODEL, HEADS, HEAD_DIM, STATE, GROUPS, CHUNK = 2048, 64, 64, 128, 8, 256


def layer_flops(batch: int, seq: int, d: int, h: int, p: int, n: int, g: int, chunk: int) -> int:
    d_in = 2 * 2 * d + 2 * g * n + h  # z, x, B, C, dt
    return 6 * batch * seq * (d * d_in + 2 * d * d) + 3 * batch * seq * h * (2 * chunk * n + 2 * chunk * p + 4 * n * p)


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--eager", action="store_true", help="leave our mixer uncompiled")
    opts = p.parse_args()
    device, dtype = common.device_and_dtype(opts.tiny)
    if opts.tiny:
        batch, seq, d, h, hd, n, g, chunk, backend = 2, 64, 64, 4, 16, 16, 2, 16, "torch"
    else:
        batch, seq, d, h, hd, n, g, chunk = opts.batch, opts.seq, D_MODEL, HEADS, HEAD_DIM, STATE, GROUPS, CHUNK
        backend = "mamba_ssm"
    flops = layer_flops(batch, seq, d, h, hd, n, g, chunk)
    u = torch.randn(batch, seq, d, device=device, dtype=dtype, requires_grad=True)
    results = {}

    def measure(label: str, layer: torch.nn.Module) -> None:
        step_s, host_s = common.time_step(lambda: layer(u).float().sum().backward(), device,
                                          opts.warmup, opts.steps)
        results[label] = common.result(step_s, host_s, device, flops=flops, tokens=batch * seq)
        common.report(label, results[label])

    # Our mixer with each conv kernel (the Triton one on CUDA only), same weights.
    for kernels in ("torch", "triton") if device.type == "cuda" else ("torch",):
        args = HybridLMArgs(dim=d, mamba_n_heads=h, mamba_head_dim=hd, mamba_d_state=n, mamba_n_groups=g,
                            mamba_chunk_size=chunk, ssd_backend=backend, mamba_kernels=kernels, layer_pattern="M")
        ours = Mamba2Mixer(args)
        init_model_for_testing(ours, 0)
        ours = ours.to(device, dtype)
        if not (opts.eager or opts.tiny):
            ours.compile()
        measure("titan_mimo" if kernels == "torch" else f"titan_mimo_{kernels}", ours)
    if device.type == "cuda" and not opts.tiny:
        # Imported after our mixer was built: its ssd_backend import made mamba-ssm importable
        # without the CUDA extension the package's __init__ asks for.
        from mamba_ssm.modules.mamba2 import Mamba2
        peer = Mamba2(d_model=d, d_state=n, headdim=hd, ngroups=g, expand=2, chunk_size=chunk,
                      use_mem_eff_path=False).to(device, dtype)
        measure("mamba_ssm", peer)
    common.write(results, opts.json)


if __name__ == "__main__":
    main()
