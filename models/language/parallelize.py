"""Parallelism for the hybrid language model, applied from outside the model code:
tensor + sequence parallel (DTensor `parallelize_module`), activation checkpointing,
per-block `torch.compile`, then FSDP2 on the data-parallel mesh.

TP plan (Megatron-style, as torchtitan's Llama): every projection into heads is colwise,
every projection out of heads rowwise with a sequence-sharded output; norms run sequence
parallel. Mamba2's per-head/per-channel parameters (conv, dt_bias, A_log, D, gated norm) are
sharded along their channel dim, matching the colwise in_proj shards: a rank holds whole heads
and whole groups, so its scan is exactly the unsharded scan restricted to those heads.

The token embedding is vocab-parallel with a *replicated* output: the first stage scatters
image embeddings into it at full sequence length, then splits the sequence itself
(`scatter_sequence`).

MoE blocks under TP route each rank's own sequence part: the router's weight (and the latent
projections) are replicated and run sequence-parallel, the shared expert is split like an MLP
block, the per-sequence expert counts of the auxiliary loss are summed over the TP ranks, and
the routed experts see this rank's tokens only (expert parallelism may take the TP ranks as part
of its group, `apply_ep`). FSDP wraps the router in its own fp32 unit (routing in fp32 under
bf16) and the routed experts in a unit over the expert mesh's data-parallel axis.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from .. import fsdp
from .moe_parallel import ExpertParallel, SumOverRanks, TokenwiseReplicated
from .model import AttentionBlock, HybridLM, MambaBlock, MLPBlock, MoEBlock

FLOAT8_KEEP_BF16 = ("tok_embeddings", "output", "moe.gate", "moe.experts", "mixer.in_proj_dt")
"""FQN substrings that stay bf16 when the trainer converts linears to float8 (torchtitan's
`filter_fqns`): the embedding and the head (the head's [vocab, dim] GEMM feeds the loss, whose
log-softmax is sensitive to its error; torchtitan's float8 configs filter `output` too), the MoE
router (routing decisions in fp32, see `apply_fsdp`) and the routed experts (grouped [E, out, in]
parameters, not nn.Linear; one expert's GEMM is too small for float8 to pay), and Mamba2's dt
projection (N = mamba_n_heads: a tiny GEMM whose output goes through softplus and exp into the
scan's decay). The blocks' attention, MLP, shared-expert and other Mamba2 projections are
candidates, subject to the size filter (`float8_filter`)."""


def _shard_params_dim0(module: nn.Module, tp_mesh: DeviceMesh) -> None:
    for name, param in list(module.named_parameters(recurse=False)):
        module.register_parameter(
            name, nn.Parameter(distribute_tensor(param, tp_mesh, [Shard(0)], src_data_rank=None))
        )


def apply_tp(model: HybridLM, tp_mesh: DeviceMesh, *, loss_parallel: bool = False) -> None:
    """Tensor + sequence parallel over `tp_mesh` (a 1-D mesh). `loss_parallel`: the head returns
    logits as a DTensor sharded on the vocabulary, for a cross-entropy under
    `torch.distributed.tensor.parallel.loss_parallel()` that never gathers them."""
    top_plan = {}
    if model.tok_embeddings is not None:
        top_plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
    if model.norm is not None:
        top_plan["norm"] = SequenceParallel()
    if model.output is not None:
        top_plan["output"] = ColwiseParallel(input_layouts=Shard(1),
                                             output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                             use_local_output=not loss_parallel)
    parallelize_module(model, tp_mesh, top_plan)
    gather_input = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    for block in model.layers.values():
        plan: dict[str, object] = {"norm": SequenceParallel()}
        if isinstance(block, AttentionBlock):
            plan.update({"attn": gather_input, "attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(),
                         "attn.wv": ColwiseParallel(), "attn.wo": RowwiseParallel(output_layouts=Shard(1))})
        elif isinstance(block, MLPBlock):
            plan.update({"mlp": gather_input, "mlp.w1": ColwiseParallel(),
                         "mlp.w2": RowwiseParallel(output_layouts=Shard(1))})
        elif isinstance(block, MambaBlock):
            plan.update({"mixer": gather_input, "mixer.out_proj": RowwiseParallel(output_layouts=Shard(1))})
            for proj in ("in_proj_z", "in_proj_x", "in_proj_B", "in_proj_C", "in_proj_dt"):
                plan[f"mixer.{proj}"] = ColwiseParallel()
        elif isinstance(block, MoEBlock):
            moe = block.moe
            # Tokens flattened to [T, D]: dim 0 is this rank's sequence part.
            per_token = TokenwiseReplicated()
            plan.update({"moe": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Shard(1),),
                                                   use_local_output=True),
                         "moe.gate": per_token, "moe.sequence_counts": SumOverRanks()})
            if moe.shared_experts is not None:
                plan.update({"moe.shared_experts": gather_input, "moe.shared_experts.w1": ColwiseParallel(),
                             "moe.shared_experts.w2": RowwiseParallel(output_layouts=Shard(1))})
            if moe.fc1_latent_proj is not None:
                plan.update({"moe.fc1_latent_proj": per_token, "moe.fc2_latent_proj": per_token})
        else:
            raise TypeError(f"apply_tp: no TP plan for block type {type(block).__name__}")
        parallelize_module(block, tp_mesh, plan)
        if isinstance(block, MambaBlock):
            mixer = block.mixer
            for sub in (mixer, mixer.conv_x, mixer.conv_B, mixer.conv_C, mixer.norm):
                _shard_params_dim0(sub, tp_mesh)


def scatter_sequence(h_BSD: torch.Tensor, tp_mesh: DeviceMesh) -> torch.Tensor:
    """Full-sequence hidden states (identical on every TP rank) -> this rank's sequence shard.
    Its backward all-gathers the gradient, so every TP rank sees the full input gradient."""
    full = DTensor.from_local(h_BSD, tp_mesh, [Replicate()], run_check=False)
    return full.redistribute(tp_mesh, [Shard(1)]).to_local()


def apply_ep(model: HybridLM, ep_mesh: DeviceMesh) -> None:
    """Split every MoE block's routed experts over `ep_mesh` (1-D), tokens moving by all-to-all."""
    for block in model.layers.values():
        if isinstance(block, MoEBlock):
            parallelize_module(block.moe.experts, ep_mesh, ExpertParallel())


def apply_fsdp(model: HybridLM, dp_mesh: DeviceMesh, param_dtype: torch.dtype,
               reshard_after_forward: bool, expert_dp_mesh: DeviceMesh | None = None) -> None:
    """FSDP2 over `dp_mesh`; in MoE blocks the router is its own unit gathered in fp32, and the
    routed experts are a unit over `expert_dp_mesh` (the expert mesh's "expert_dp": every rank of
    the stage outside the expert's ep group), sharded on dim 1 since dim 0 may already be split
    over ep and may have fewer experts than ranks."""
    for block in model.layers.values():
        if isinstance(block, MoEBlock):
            fsdp.shard_unit(block.moe.gate, dp_mesh, torch.float32, reshard_after_forward)
            if expert_dp_mesh is not None:
                fsdp.shard_unit(block.moe.experts, expert_dp_mesh, param_dtype, reshard_after_forward,
                                shard_placement_fn=lambda param: Shard(1))
    fsdp.apply_fsdp(model, model.layers.values(), dp_mesh, param_dtype, reshard_after_forward)
