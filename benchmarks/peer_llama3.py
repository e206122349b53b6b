"""Peer: torchtitan 0.2.2's own Llama-3 model trained on one GPU the way torchtitan's trainer does
there: fp32 parameters, the step under bf16 autocast (`maybe_enable_amp`; torchtitan uses FSDP
only with more than one data-parallel rank), each TransformerBlock compiled (torchtitan's
`apply_compile`), torchtitan's cross-entropy on the full logits, fused AdamW. Measures tokens/s
and MFU by torchtitan's own FLOP formula (`get_nparams_and_flops`: 6 x parameters without the
embedding + 12 x layers x heads x head dim x seq, causal attention as the full square).

    python -m benchmarks.peer_llama3 [--model 1B] [--batch 2] [--seq 8192] [--no-compile] [--json PATH]

"1B" is Llama-3's 8B arguments at dim 2048, 16 layers, 32 heads, 8 kv heads, vocab 128256 (the
shape of titan_mimo's `hybrid_lm/attn_1b`, whose MLP is relu² with 2 matrices instead of SwiGLU's
3: compare MFU, not tokens/s); "8B" and torchtitan's other flavors by name.
"""

import dataclasses
from types import SimpleNamespace

import torch
from torchtitan.components.loss import cross_entropy_loss
from torchtitan.models.llama3 import Transformer, llama3_args
from torchtitan.models.llama3.infra.parallelize import apply_compile

from benchmarks import common


def model_args(name: str, seq: int, tiny: bool):
    if tiny:
        return dataclasses.replace(llama3_args["debugmodel"], max_seq_len=seq)
    if name == "1B":
        return dataclasses.replace(llama3_args["8B"], dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                                   vocab_size=128256, max_seq_len=seq)
    return dataclasses.replace(llama3_args[name], max_seq_len=seq)


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default="1B")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--no-compile", action="store_true")
    opts = p.parse_args()
    device, dtype = common.device_and_dtype(opts.tiny)
    seq, batch = (64, 2) if opts.tiny else (opts.seq, opts.batch)
    args = model_args(opts.model, seq, opts.tiny)
    with torch.device("meta"):
        model = Transformer(args)
    if not (opts.no_compile or opts.tiny):
        apply_compile(model, SimpleNamespace(backend="inductor"))
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=device)
    _, flops_per_token = args.get_nparams_and_flops(model, seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    tokens = torch.randint(0, args.vocab_size, (batch, seq + 1), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = cross_entropy_loss(model(tokens[:, :-1]), tokens[:, 1:]) / tokens[:, 1:].numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_s, host_s = common.time_step(step, device, opts.warmup, opts.steps)
    out = common.result(step_s, host_s, device, flops=flops_per_token * batch * seq, tokens=batch * seq)
    common.report(f"torchtitan Llama-3 {'debugmodel' if opts.tiny else opts.model}", out)
    common.write({"torchtitan": out}, opts.json)


if __name__ == "__main__":
    main()
