"""The optimizer step across modules: per-module AdamW + LR schedule in lockstep, one global
gradient norm over every module's parameters, and the loss-token count that normalises the loss.

Every function here that reduces over the world is called on every rank, in the same order,
whatever modules the rank holds: that is what keeps the world collectives matched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from titan_mimo.build import BuiltModule
from titan_mimo.compat import LocalShardAdamW, foreach_mul_
from titan_mimo.config import JobConfig
from titan_mimo.data.batch import IGNORE_INDEX
from titan_mimo.torchtitan_ext.lr_scheduler import warmup_decay_factor, warmup_decay_schedulers


def trainable_parts(module: BuiltModule) -> list[tuple[nn.Module, list[nn.Parameter]]]:
    """(part, its trainable parameters) for each part that has any: the parts that get an AdamW,
    in the order `build_optimizers` lists them (checkpoints pair parts and optimizers by it)."""
    parts = [(part, [p for p in part.parameters() if p.requires_grad]) for part in module.parts]
    return [(part, params) for part, params in parts if params]


def build_optimizers(cfg: JobConfig, modules: dict[str, BuiltModule], device: torch.device
                     ) -> dict[str, list[torch.optim.Optimizer]]:
    """AdamW at lr * the module's lr_scale for every trainable module this rank holds: one
    optimizer per part (pipeline stage), so each optimizer's state maps onto one part's
    fully-qualified parameter names, which is what DCP checkpoints and reshards by. AdamW is
    elementwise, so splitting it by part changes no number, and neither does stepping the
    DTensor parameters on their local shards (`LocalShardAdamW`)."""
    o = cfg.optimizer
    impl = o.implementation
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "foreach"
    opts = {}
    for name, m in modules.items():
        if m.frozen:
            continue
        per_part = [LocalShardAdamW(params, lr=o.lr * m.lr_scale, betas=(o.beta1, o.beta2), eps=o.eps,
                                      weight_decay=o.weight_decay, fused=impl == "fused",
                                      foreach=impl == "foreach")
                    for _, params in trainable_parts(m)]
        if per_part:
            opts[name] = per_part
    return opts


def build_schedulers(cfg: JobConfig, optimizers: dict[str, list[torch.optim.Optimizer]]) -> dict:
    """torchtitan's warmup + decay LambdaLR container per module, all with the same factor."""
    return {name: warmup_decay_schedulers(opts, **_schedule_fields(cfg)) for name, opts in optimizers.items()}


def _schedule_fields(cfg: JobConfig) -> dict:
    s = cfg.lr_scheduler
    return {"warmup_steps": s.warmup_steps, "decay_type": s.decay_type, "min_lr_factor": s.min_lr_factor,
            "training_steps": cfg.training.steps}


def language_lr_schedule(cfg: JobConfig):
    """step (0-based) -> the language module's LR, the same on every rank (including ranks with
    no optimizer): torchtitan's warmup/decay factor times lr times the module's lr_scale."""
    factor = warmup_decay_factor(**_schedule_fields(cfg))
    peak = cfg.optimizer.lr * cfg.modules[cfg.language_name].lr_scale
    return lambda step: peak * factor(step)


@torch.no_grad()
def local_grad_sq(module: BuiltModule, stage_ranks: int, device: torch.device) -> torch.Tensor:
    """This rank's share of the module's squared gradient norm.

    A parameter split into n distinct pieces over the `stage_ranks` ranks of its pipeline
    stage (FSDP shards, TP shards, or 1 piece when replicated) has each piece on
    stage_ranks / n ranks; weighting each rank's local sum of squares by n / stage_ranks makes
    the world sum count every piece exactly once, for any mix of FSDP, TP, HSDP and plain
    replicated parameters.

    A float64 scalar on `device`, not read back: one multi-tensor norm per weight
    (torch.nn.utils.get_total_norm), combined in float64, so the step's reduction and the
    clipping can be queued without the host waiting for the backward to finish.
    """
    by_weight: dict[float, list[torch.Tensor]] = {}
    for p in module.parameters():
        if p.grad is None:
            continue
        g = p.grad
        n_pieces = 1
        if isinstance(g, DTensor):
            # "Not replicated", not `is_shard()`: a parameter sharded on the same dim by TP and
            # FSDP carries `_StridedShard` on its FSDP axis, and on torch 2.13 that class is no
            # longer a `Shard` (`is_shard()` is False), which undercounted such parameters and
            # changed the clip coefficient with dp_shard x tp (the lm_dp2_tp2 mismatch).
            for mesh_dim, placement in enumerate(g.placements):
                assert not placement.is_partial(), f"unreduced gradient ({g.placements}) in the norm"
                if not placement.is_replicate():
                    n_pieces *= g.device_mesh.size(mesh_dim)
            g = g.to_local()
        by_weight.setdefault(n_pieces / stage_ranks, []).append(g.detach())
    total = torch.zeros((), dtype=torch.float64, device=device)
    for weight, grads in by_weight.items():
        total = total + weight * torch.nn.utils.get_total_norm(grads).double().square()
    return total


@torch.no_grad()
def clip_coefficient(total_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(1, max_norm / (norm + 1e-6)), or 1 when max_norm <= 0 or the norm is not finite; on a
    float64 device scalar, so it is never read back before the optimizers are queued."""
    if max_norm <= 0:
        return torch.ones_like(total_norm)
    coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    return torch.where(torch.isfinite(total_norm), coef, torch.ones_like(coef))


@torch.no_grad()
def scale_grads(modules: dict[str, BuiltModule], coef: torch.Tensor) -> None:
    """Multiply every gradient by the clip coefficient (a device scalar, applied in float32 as a
    Python float would be; multiplying by 1.0 changes no value), one multi-tensor op per module."""
    coef = coef.float()
    for m in modules.values():
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                 for p in m.parameters() if p.grad is not None]
        if grads:
            foreach_mul_(grads, coef)


def count_loss_tokens(labels: list[torch.Tensor]) -> int:
    return int(sum(int((lab != IGNORE_INDEX).sum()) for lab in labels))

