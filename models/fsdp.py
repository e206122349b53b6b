"""Mixed precision for every model's parallelize.py: FSDP2 wrapping, or autocast for a module
that runs unwrapped on one rank."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def apply_fsdp(root: nn.Module, blocks: Iterable[nn.Module], dp_mesh: DeviceMesh,
               param_dtype: torch.dtype, reshard_after_forward: bool = True) -> None:
    """fully_shard each block, then the root (which takes the remaining parameters).

    Parameters are gathered in `param_dtype`; gradients are reduced in fp32 and *summed*, not
    averaged, over dp: the trainer's loss is already divided by the global token count, so
    FSDP's own division would apply it twice. Sum-only collectives (no PREMUL_SUM) keep gloo
    working too. On a one-rank mesh FSDP neither averages nor reduces, and a divide factor
    (even 1) would only add a division pass over every gradient, so none is set there.
    """
    for unit in list(blocks) + [root]:
        shard_unit(unit, dp_mesh, param_dtype, reshard_after_forward)


def shard_unit(unit: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype,
               reshard_after_forward: bool = True, shard_placement_fn=None) -> None:
    """One FSDP2 unit with `apply_fsdp`'s policy: gathered in `param_dtype`, gradients reduced in
    fp32 and summed. Sharding inner units (a MoE router, its experts) before their block puts
    their parameters under their own mesh and policy."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward,
                shard_placement_fn=shard_placement_fn)
    if mesh.size() > 1:
        # Both settings are per FSDP unit (not recursive).
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)


def autocast_forward(module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
    """Mixed precision without FSDP (a module on one rank): `module`'s forward runs under
    `torch.autocast(device_type, dtype)`, with fp32 parameters, gradients and optimizer state;
    matmuls and convolutions compute in `dtype`, what autocast keeps in fp32 (norms, softmax,
    losses) stays fp32, as torchtitan trains on one GPU. A forward recomputed by activation
    checkpointing runs under the same autocast state. Nothing to do for fp32.

    The wrapper is an instance attribute, so parameter names and state dicts are unchanged;
    everything that should compute in `dtype` must run inside the module's forward."""
    if dtype == torch.float32:
        return
    forward = module.forward

    @functools.wraps(forward)
    def forward_in_autocast(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    module.forward = forward_in_autocast
