"""`modules.<name>.cuda_graphs` (titan_mimo/cuda_graphs.py): what the config and the build refuse,
everywhere; on a GPU, that captured blocks give the gradients of the uncaptured ones (two
accumulated micro-batches), fall back for another shape, refuse a second forward before the
first one's backward, and that a run of the trainer with them repeats the run without."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from titan_mimo.build import check_cuda_graphs
from titan_mimo.config_loader import config_from_dict
from titan_mimo.cuda_graphs import graph_on_first_call
from titan_mimo.models import build_model
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.model import BlockStack
from titan_mimo.models.language.moe import moe_layers, set_aux_loss_scale

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cfg(**language) -> dict:
    return {"modules": {"language": {"model": "hybrid_lm/debug", "ranks": 1, "cuda_graphs": True, **language}}}


@pytest.mark.parametrize("language, match", [
    ({"activation_checkpoint": "full"}, "checkpointed block saves and restores the RNG state"),
    ({"activation_checkpoint": "selective"}, "use 'memory_budget'"),
    ({"tp": 2}, "tp = 2: captured blocks run on one rank"),
    ({"pp": 2, "ranks": 2}, "pp = 2"),
])
def test_config_refuses_what_a_graph_cannot_capture(language, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(_cfg(**language))


def test_config_refuses_an_encoder_and_fsdp_on_one_rank():
    data = _cfg()
    data["modules"]["vision"] = {"model": "vit/debug", "feeds": "language", "placeholder_id": 1,
                                 "cuda_graphs": True}
    with pytest.raises(ValueError, match="an encoder's are not captured"):
        config_from_dict(data)
    with pytest.raises(ValueError, match="fsdp_one_rank = true: FSDP's hooks"):
        config_from_dict({**_cfg(), "parallelism": {"fsdp_one_rank": True}})
    config_from_dict(_cfg(activation_checkpoint="memory_budget", compile=True))


def test_build_refuses_a_cpu_a_sharded_module_and_host_read_moe_counts():
    with pytest.raises(ValueError, match="captures CUDA graphs; this run is on 'cpu'"):
        check_cuda_graphs("language", "M*-", "torch", False, torch.device("cpu"))
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match="one rank without FSDP"):
        check_cuda_graphs("language", "M*-", "torch", True, cuda)
    with pytest.raises(ValueError, match="moe_backend = 'torch' read their experts' token counts on the host"):
        check_cuda_graphs("language", "M*E", "torch", False, cuda)
    with pytest.raises(ValueError, match="MoE blocks are not verified under CUDA graphs"):
        check_cuda_graphs("language", "M*E", "grouped_mm", False, cuda)
    check_cuda_graphs("language", "M*-", "torch", False, cuda)


def test_block_stack_runs_its_blocks_in_order_under_plain_names():
    torch.manual_seed(0)
    blocks = {str(i): nn.Linear(4, 4) for i in range(3)}
    stack = BlockStack(blocks)
    x = torch.randn(2, 4)
    assert torch.equal(stack(x), blocks["2"](blocks["1"](blocks["0"](x))))
    assert list(stack.state_dict()) == list(nn.ModuleDict(blocks).state_dict())


def test_uncaptured_off_the_gpu():
    """A CPU input never captures: the stack runs as before."""
    model = build_model("hybrid_lm/debug", ssd_backend="torch")
    reference = model.layers.forward
    graph_on_first_call(model.layers, microbatches_per_step=1)
    h = torch.randn(2, 16, model.args.dim)
    assert torch.equal(model.layers(h), reference(h))


def _stack_and_grads(graphed: bool, inputs: list[torch.Tensor], flavor: str = "hybrid_lm/debug",
                     scales: list[float] | None = None, bf16: bool | None = None, **args):
    """The stack's outputs and input gradients per micro-batch, and its parameters' gradients
    accumulated over them. `scales`: the auxiliary-loss scale of each micro-batch (10, 20, ...);
    `bf16`: under bf16 autocast (default: where there are MoE blocks, whose grouped GEMM
    experts compute in bf16)."""
    model = build_model(flavor, ssd_backend="torch", **args)
    # build_model leaves some parameters uninitialised (torch.empty: the MoE's experts and router).
    init_model_for_testing(model, 0)
    model = model.cuda()
    if graphed:
        graph_on_first_call(model.layers, microbatches_per_step=len(inputs))
    moes = list(moe_layers(model).values())
    bf16 = bool(moes) if bf16 is None else bf16
    outs = []
    for i, h in enumerate(inputs):  # accumulate over micro-batches, as a step does
        # A new auxiliary-loss scale each micro-batch: a replay reads the buffer, not the capture's.
        set_aux_loss_scale(moes, scales[i] if scales else 10.0 * (i + 1))
        h = h.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model.layers(h)
        out.float().square().mean().backward()
        # A leaf input's .grad is the graph's static buffer (autograd keeps the tensor it is
        # handed), which the next replay overwrites: read it before the next micro-batch.
        outs.append((out.detach().clone(), h.grad.clone()))
    return model, outs, {n: p.grad.clone() for n, p in model.layers.named_parameters()}


@CUDA
def test_captured_blocks_give_the_uncaptured_gradients():
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, 64, 64, generator=g).cuda() for _ in range(3)]
    _, outs, grads = _stack_and_grads(False, inputs)
    model, outs_g, grads_g = _stack_and_grads(True, inputs)
    for (o, gi), (o_g, gi_g) in zip(outs, outs_g):
        torch.testing.assert_close(o_g, o, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gi_g, gi, rtol=1e-5, atol=1e-6)
    for name in grads:  # 3 micro-batches accumulated: none overwritten by a later replay
        torch.testing.assert_close(grads_g[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    # Another shape, or no gradient (evaluation), runs uncaptured.
    other = torch.randn(1, 32, 64, device="cuda")
    assert model.layers(other.requires_grad_()).shape == other.shape
    with torch.no_grad():
        torch.testing.assert_close(model.layers(inputs[0]), outs[0][0], rtol=1e-5, atol=1e-6)
    out = model.layers(inputs[0].clone().requires_grad_())
    with pytest.raises(RuntimeError, match="before the backward of the previous one"):
        model.layers(inputs[1].clone().requires_grad_())
    out.sum().backward()
    model.layers(inputs[1].clone().requires_grad_()).sum().backward()


@CUDA
def test_captured_moe_blocks_route_count_and_balance_as_uncaptured():
    """(The build refuses cuda_graphs with MoE blocks until this passes on a GPU. On an H200 with
    torch 2.11 it fails: outputs and input gradients agree to 1e-5, but every MoE block's router
    weight gradient is 2.6-2.9e-3 (relative) off the uncaptured one against a bound of 7e-4, and
    the norm before it follows; the Mamba2 parameters of block 0 are off by at most 1.3x their
    bound. A systematic difference in the routers' backward under capture, cause not found.)
    MoE blocks (grouped GEMM experts, the auxiliary loss's gradient scale and the routers'
    token counts in device buffers) under bf16 autocast, over two micro-batches with different
    auxiliary-loss scales: the same outputs, gradients and token counts (the capture's warm-up
    counts nothing); an evaluation forward counts nothing.

    The gradients are held to bf16 round-off, not to 1e-5 (two uncaptured runs agree bitwise, but
    captured bf16 kernels need not round as uncaptured ones do): the same run with bf16 against
    float32 differs by 1e-3 to 1e-1 per parameter (CPU), and one whose second micro-batch kept the
    first's scale (what a replay reading a captured constant computes) by up to 0.5. So each
    parameter's gradient may be off the uncaptured one by at most what bf16 puts it off the
    float32 run, and the stale-scale run must exceed that bound: the check sees what a wrong
    capture would do."""
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(2, 32, 64, generator=g).cuda() for _ in range(2)]
    moe = {"flavor": "hybrid_lm/debug_moe", "moe_backend": "grouped_mm"}
    eager, outs, grads = _stack_and_grads(False, inputs, **moe)
    model, outs_g, grads_g = _stack_and_grads(True, inputs, **moe)
    # float32: the PyTorch experts (grouped GEMM takes bf16), the same weights (init by name).
    _, _, grads_fp32 = _stack_and_grads(False, inputs, "hybrid_lm/debug_moe", bf16=False, moe_backend="torch")
    _, _, stale = _stack_and_grads(False, inputs, scales=[10.0, 10.0], **moe)
    for (o, gi), (o_g, gi_g) in zip(outs, outs_g):
        torch.testing.assert_close(o_g, o, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gi_g, gi, rtol=1e-5, atol=1e-5)
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    bound = {n: max(rel(grads[n], grads_fp32[n]), 1e-5) for n in grads}
    # Every parameter's error, not only the first one's: which ones are off says where to look.
    off = {n: (rel(grads_g[n], grads[n]), bound[n]) for n in grads if rel(grads_g[n], grads[n]) > bound[n]}
    assert not off, f"(captured vs uncaptured, bf16 vs float32) relative errors: {off}"
    caught = [n for n in grads if rel(stale[n], grads[n]) > bound[n]]
    assert len(caught) >= len(grads) // 2, f"a stale scale would go unseen: only {caught} exceed the bound"
    counts = {n: b.clone() for n, b in model.named_buffers() if n.endswith("tokens_per_expert")}
    assert counts and all(c.sum() > 0 for c in counts.values())
    assert all(torch.equal(counts[n], b) for n, b in eager.named_buffers() if n in counts)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.layers(inputs[0])
    assert all(torch.equal(counts[n], b) for n, b in model.named_buffers() if n in counts)


@CUDA
def test_a_trainer_run_with_captured_blocks_repeats_the_run_without(tmp_path):
    """The trainer's path: bf16 autocast, compiled blocks under a memory budget, two micro-batches
    per step (the PyTorch scan: mamba-ssm's autotunes for minutes on every new shape; the bench
    compares the two on hybrid_2b with it, docs/benchmarks.md)."""
    losses = {}
    for graphs in (False, True):
        out = tmp_path / str(graphs)
        subprocess.run([sys.executable, "-m", "titan_mimo.train", "--config", "train_configs/hybrid_2b_1gpu.toml",
                        f"--job.dump_folder={out}", "--modules.language.model=hybrid_lm/debug",
                        "--modules.language.model_args.ssd_backend=torch",
                        f"--modules.language.cuda_graphs={str(graphs).lower()}",
                        "--training.steps=4", "--training.global_batch_size=4",
                        "--training.micro_batch_size=2", "--training.seq_len=256",
                        "--metrics.enable_tensorboard=false"], check=True, timeout=600)
        losses[graphs] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses[False]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=2e-3)
