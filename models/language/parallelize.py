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
from .model import AttentionBlock, HybridLM, MambaBlock, MLPBlock


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


def apply_fsdp(model: HybridLM, dp_mesh: DeviceMesh, param_dtype: torch.dtype,
               reshard_after_forward: bool) -> None:
    fsdp.apply_fsdp(model, model.layers.values(), dp_mesh, param_dtype, reshard_after_forward)
