"""Build this rank's share of every module: meta-device model -> float8 linears (optional) ->
pipeline stage split -> TP / FSDP -> materialise -> layout-independent init.

Encoders are built whole; the language model is split into `pp * stages_per_rank` stages, each a
`LanguageStage` holding its parts of one meta-device model under the model's names, which keeps
FQNs global (checkpoints and the seed-per-FQN init both rely on that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from titan_mimo.compat import (composable_checkpoint, emulate_precision_casts, enable_coordinate_descent_tuning,
                               scope_activation_memory_budget)

from titan_mimo.config import JobConfig
from titan_mimo.cuda_graphs import graph_on_first_call
from titan_mimo.init import init_module_weights
from titan_mimo.hf import training as hf_training
from titan_mimo.models import build_from_args, model_args
from titan_mimo.models.fsdp import autocast_forward
from titan_mimo.models.language import parallelize as lm_parallel
from titan_mimo.models.vision import parallelize as vit_parallel
from titan_mimo.stages import LanguageStage
from titan_mimo.topology import Topology
from titan_mimo.torchtitan_ext.float8 import convert_to_float8, needs_emulation

if TYPE_CHECKING:
    from titan_mimo.embeddings import EncoderEmbeddings

COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(kw_only=True)
class BuiltModule:
    """One module as this rank holds it."""

    name: str
    is_encoder: bool
    parts: list[nn.Module]
    """The encoder itself, or this rank's language stages (in stage order)."""
    stage_ids: list[int]
    """Language: global stage index of each part; encoder: [0]."""
    n_stages: int
    frozen: bool
    lr_scale: float
    sharded: bool = True
    """Wrapped in FSDP2. False for a module on one rank (dp 1, tp 1, not pipelined) unless
    `parallelism.fsdp_one_rank`: plain fp32 parameters, forward under autocast."""
    keeps_gathered: bool = False
    """FSDP keeps each block's gathered parameters after its forward (reshard_after_forward
    off): the schedule then also keeps them through every micro-batch's backward but the last,
    so a step gathers each block once."""

    def parameters(self) -> list[nn.Parameter]:
        return [p for part in self.parts for p in part.parameters()]


def module_args(cfg: JobConfig) -> dict[str, object]:
    """Model args of every module; encoders project into the language model's width."""
    lm = cfg.modules[cfg.language_name]
    lm_args = _model_args(cfg.language_name, lm.model, lm.model_args, is_encoder=False)
    if lm.ep > 1 and "E" not in lm_args.layer_pattern:
        raise ValueError(f"modules.{cfg.language_name}.ep = {lm.ep}: the model {lm.model!r} has no MoE "
                         f"blocks ('E' in layer_pattern {lm_args.layer_pattern!r}); set ep = 1")
    if lm.ep > 1 and lm_args.n_routed_experts % lm.ep:
        raise ValueError(f"modules.{cfg.language_name}.ep = {lm.ep} does not divide the model's "
                         f"n_routed_experts = {lm_args.n_routed_experts}; pick an ep that divides it")
    out = {}
    for name, m in cfg.modules.items():
        out[name] = (lm_args if name == cfg.language_name
                     else _model_args(name, m.model, {**m.model_args, "out_dim": lm_args.dim}, is_encoder=True))
    return out


def _model_args(name: str, model: str, overrides: dict, is_encoder: bool):
    try:
        if (folder := hf_training.folder_of(model)) is not None:
            return hf_training.module_args(folder, is_encoder, overrides)
        return model_args(model, **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"modules.{name}.model_args: {e}") from None


def stage_layers(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous layer ranges per stage; earlier stages take the remainder."""
    if n_layers < n_stages:
        raise ValueError(f"the language model has {n_layers} layers, fewer than {n_stages} pipeline stages")
    base, extra = divmod(n_layers, n_stages)
    out, start = [], 0
    for s in range(n_stages):
        size = base + (1 if s < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def stage_ids_of(pp_rank: int, pp: int, stages_per_rank: int) -> list[int]:
    """Looped placement (Interleaved1F1B): pp rank r holds stages r, r + pp, ..."""
    return [pp_rank + v * pp for v in range(stages_per_rank)]


def checkpointed_layers(layer_kinds: str, mode: str, kinds: str = "", every: int = 1) -> set[int]:
    """Global indices of the blocks to activation-checkpoint, out of blocks whose kinds are
    `layer_kinds` (the LM's layer pattern; one character per block, e.g. "M-M*-"; an encoder
    passes one kind for all): none, all ("full"), or ("selective") every `every`-th block whose
    kind is in `kinds` (all kinds if empty), counted from the first. Indices are global, so a
    pipeline stage checkpoints the same blocks it would in the whole model."""
    if mode in ("none", "memory_budget"):
        return set()
    if mode == "full":
        return set(range(len(layer_kinds)))
    if mode != "selective":
        raise ValueError(f"activation_checkpoint = {mode!r} is not one of 'none', 'full', 'selective', "
                         "'memory_budget'")
    picked = [i for i, kind in enumerate(layer_kinds) if not kinds or kind in kinds]
    return set(picked[::every])


def apply_block_options(blocks: dict[str, nn.Module], checkpointed: set[int], compile_blocks: bool) -> None:
    """Per-block activation checkpointing (blocks whose global index is in `checkpointed`) and
    torch.compile (every block), in place: the composable `checkpoint` and `Module.compile` keep
    parameter names unchanged (init seeds and checkpoint keys depend on them), unlike wrapper
    modules. Checkpointing goes on before compile on each block, and both before FSDP, as
    torchtitan does."""
    for idx, block in blocks.items():
        if int(idx) in checkpointed:
            composable_checkpoint(block)
        if compile_blocks:
            block.compile()


def check_cuda_graphs(name: str, layer_pattern: str, moe_backend: str, sharded: bool, device: torch.device) -> None:
    """What `cuda_graphs` needs beyond what the config checks alone: a CUDA device, a module that
    is not sharded, and no MoE blocks (their captured gradients are not verified yet)."""
    where = f"modules.{name}.cuda_graphs"
    if device.type != "cuda":
        raise ValueError(f"{where} captures CUDA graphs; this run is on {device.type!r}: set it false")
    if sharded:
        raise ValueError(f"{where} needs the module on one rank without FSDP (its hooks and collectives "
                         "run on the host between blocks): one rank, tp = pp = 1 and "
                         "parallelism.fsdp_one_rank = false, or cuda_graphs = false")
    if "E" in layer_pattern and moe_backend != "grouped_mm":
        raise ValueError(f"{where}: MoE blocks with moe_backend = {moe_backend!r} read their experts' "
                         "token counts on the host, which a CUDA graph cannot capture; use "
                         "moe_backend = 'grouped_mm' or cuda_graphs = false")
    if "E" in layer_pattern:
        # Not a limit of capture itself: the GPU test of captured MoE blocks
        # (tests/test_cuda_graphs.py) does not pass, so no run trusts it.
        raise ValueError(f"{where}: MoE blocks are not verified under CUDA graphs (on an H200 the captured "
                         "routers' weight gradients are 2.6-2.9e-3 relative off the uncaptured ones, 4x "
                         "what bf16 moves them from float32; cause not found); set cuda_graphs = false")


def reshards_after_forward(mcfg, n_stages: int) -> bool:
    """The module's `reshard_after_forward`: by default yes, except on pipelined stages, whose
    parameters every in-flight micro-batch's backward needs again (resharding would re-gather
    them each time). Always for a frozen encoder: it runs no backward, which is where kept
    parameters would be freed, so they would stay gathered for good (a frozen language model
    still runs its backward, for the encoders' gradients)."""
    if mcfg.frozen and mcfg.feeds:
        return True
    if mcfg.reshard_after_forward == "default":
        return n_stages == 1
    return mcfg.reshard_after_forward == "always"


def apply_float8(model: nn.Module, mcfg, keep_bf16: tuple[str, ...], device: torch.device, *,
                 tokens_align: bool) -> list[str]:
    """The module's `float8` option on its whole meta-device model, before TP, compile and FSDP
    (torchtitan converts at the same point): the linears it picks become Float8Linears with the
    same parameters, emulated on a CPU. `tokens_align`: the module's tokens per micro-batch always
    divide by 16 (else its float8 matmuls zero-pad the weight gradients' inner dimension, the
    tokens, as torch._scaled_mm needs). Returns their FQNs (none for float8 = "none")."""
    if mcfg.float8 == "none":
        return []
    if mcfg.float8 == "rowwise":
        emulate_precision_casts()
    return convert_to_float8(model, mcfg.float8, layers=mcfg.float8_filter, keep_fqns=keep_bf16,
                             emulate=needs_emulation(device), pad_inner_dim=not tokens_align)


def _checkpointed(mcfg, layer_kinds: str) -> set[int]:
    return checkpointed_layers(layer_kinds, mcfg.activation_checkpoint, mcfg.ac_layers, mcfg.ac_every)


def build_modules(cfg: JobConfig, args: dict, topo: Topology, device: torch.device, *,
                  names: list[str] | None = None, embeddings: EncoderEmbeddings | None = None
                  ) -> dict[str, BuiltModule]:
    """`args`: `module_args(cfg)`. `names`: build only these of this rank's modules (default:
    all). `embeddings`: what the language model's first stage merges into its input (the
    encoders' embeddings; built after the encoders, which a colocated one runs)."""
    compute_dtype = COMPUTE_DTYPES[cfg.training.mixed_precision]
    if cfg.training.coordinate_descent_tuning:
        enable_coordinate_descent_tuning()
    built = {}
    for name in topo.my_modules:
        if names is not None and name not in names:
            continue
        mcfg, place, mesh = cfg.modules[name], topo.placements[name], topo.meshes[name]
        coords = topo.coords(name)
        dp_mesh = mesh["dp_replicate", "dp_shard"] if place.dp_replicate > 1 else mesh["dp_shard"]
        tp_mesh = mesh["tp"] if place.tp > 1 else None
        n_stages = 1 if mcfg.feeds else place.pp * cfg.parallelism.stages_per_rank
        reshard = reshards_after_forward(mcfg, n_stages)
        sharded = (cfg.parallelism.fsdp_one_rank or dp_mesh.size() > 1 or tp_mesh is not None
                   or n_stages > 1)
        if mcfg.feeds:
            with torch.device("meta"):
                model = build_from_args(args[name])
            # An encoder's tokens per micro-batch follow its images (ViT-H/16: 4097 per 1024^2 image).
            apply_float8(model, mcfg, vit_parallel.FLOAT8_KEEP_BF16, device, tokens_align=False)
            if tp_mesh is not None:
                vit_parallel.apply_tp(model, tp_mesh)
            blocks = model.encoder.layers
            apply_block_options(blocks, _checkpointed(mcfg, "B" * len(blocks)), mcfg.compile)
            if sharded:
                vit_parallel.apply_fsdp(model, dp_mesh, compute_dtype, reshard_after_forward=reshard)
            else:
                autocast_forward(model, device.type, compute_dtype)
            parts, stage_ids = [model], [0]
        else:
            stage_ids = stage_ids_of(coords["pp"], place.pp, cfg.parallelism.stages_per_rank)
            expert_mesh = topo.expert_meshes.get(name)
            with torch.device("meta"):
                full = build_from_args(args[name])
            apply_float8(full, mcfg, lm_parallel.FLOAT8_KEEP_BF16, device,
                         tokens_align=cfg.training.seq_len % 16 == 0)
            ranges = stage_layers(len(full.layers), n_stages)
            parts = []
            for sid in stage_ids:
                stage = LanguageStage(full, ranges[sid], is_first=sid == 0, is_last=sid == n_stages - 1,
                                      embeddings=embeddings if sid == 0 else None,
                                      tp_mesh=tp_mesh if sid == 0 else None)
                if tp_mesh is not None:
                    # Without pipelining the head's vocabulary-sharded logits go straight into a
                    # loss-parallel cross-entropy (schedule.py); a pipeline's last stage hands
                    # plain logits to pipelining's loss_fn.
                    lm_parallel.apply_tp(stage, tp_mesh, loss_parallel=n_stages == 1)
                if place.ep > 1:
                    lm_parallel.apply_ep(stage, expert_mesh["ep"])
                apply_block_options(stage.layers, _checkpointed(mcfg, full.args.layer_pattern), mcfg.compile)
                if mcfg.cuda_graphs:
                    check_cuda_graphs(name, full.args.layer_pattern, full.args.moe_backend, sharded, device)
                    graph_on_first_call(stage.layers, topo.n_microbatches)
                if sharded:
                    lm_parallel.apply_fsdp(stage, dp_mesh, compute_dtype, reshard_after_forward=reshard,
                                           expert_dp_mesh=None if expert_mesh is None else expert_mesh["expert_dp"])
                else:
                    autocast_forward(stage, device.type, compute_dtype)
                parts.append(stage)
        if mcfg.activation_checkpoint == "memory_budget":
            for part in parts:
                scope_activation_memory_budget(part, mcfg.memory_budget)
        for part in parts:
            part.to_empty(device=device)
            init_module_weights(part, cfg.training.seed, prefix=name,
                                on_device=cfg.training.init_device == "device")
            if mcfg.frozen:
                part.requires_grad_(False)
        built[name] = BuiltModule(name=name, is_encoder=bool(mcfg.feeds), parts=parts,
                                  stage_ids=stage_ids, n_stages=n_stages, frozen=mcfg.frozen,
                                  lr_scale=mcfg.lr_scale,
                                  sharded=sharded, keeps_gathered=sharded and not reshard)
    return built
