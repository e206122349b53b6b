"""Layout-independent initialisation of a module that was built on the meta device and
parallelized (FSDP2 / TP), then materialised with `to_empty`.

Every parameter's full value is generated from a generator seeded by (seed, fully-qualified
name) and the model's own init rule (`titan_mimo.models.common.init_parameter`); each rank then
keeps the slice its placement owns. So a parameter starts from the same value whether it lives
on one rank, is sharded by FSDP over four, or split by TP — the basis of layout invariance.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate

from titan_mimo.models.common import init_buffers, init_parameter, param_generator


@torch.no_grad()
def init_module_weights(module: nn.Module, seed: int, prefix: str, on_device: bool = False) -> None:
    """Initialise every parameter of `module`; `prefix` is the module's name in the model graph
    so two modules of the same architecture (two vision towers) start from different values.
    `on_device`: draw each full value on the parameters' device (its own generator type, so other
    values than the CPU draw, the same on every rank of that device type) instead of the host."""
    for owner_name, owner in module.named_modules():
        for pname, param in owner.named_parameters(recurse=False):
            fqn = ".".join(p for p in (prefix, owner_name, pname) if p)
            gen_device = param.device if on_device else torch.device("cpu")
            full = torch.empty(param.shape, dtype=torch.float32, device=gen_device)
            init_parameter(owner, pname, full, param_generator(seed, fqn, gen_device))
            if isinstance(param, DTensor):
                # Replicate -> (Shard | _StridedShard) is a local slice: no communication.
                full_dt = DTensor.from_local(full.to(param.device), param.device_mesh,
                                             [Replicate()] * param.device_mesh.ndim, run_check=False)
                param.to_local().copy_(full_dt.redistribute(param.device_mesh, param.placements).to_local())
            else:
                param.copy_(full)
    init_buffers(module)
