"""Copy file tensors into a module, whatever its placement: each rank reads only the rows (and
columns) of its own shards, through safetensors slices, and writes them into its local tensors.
No communication, so modules on different ranks load independently.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate

from .files import Folder
from .names import Source

__all__ = ["load_into", "local_indices"]


def local_indices(t: torch.Tensor) -> list[torch.Tensor | None]:
    """For each dim of `t`'s full shape, the global indices this rank's local tensor holds, in
    local order (None: all of them, in order).

    Found by DTensor itself rather than by re-deriving its chunking: an index grid (an expanded
    view, no memory) is redistributed from Replicate to `t`'s placements, which is a local slice.
    That covers FSDP's and TP's Shard, uneven chunks, and the strided sharding FSDP uses on top of
    a TP shard of the same dim, with no private placement types."""
    if not isinstance(t, DTensor):
        return [None] * t.ndim
    local = t.to_local()
    mesh, out = t.device_mesh, []
    for d, size in enumerate(t.shape):
        if local.shape[d] == size:
            out.append(None)
            continue
        view = [1] * t.ndim
        view[d] = size
        grid = torch.arange(size, device=local.device).view(view).expand(t.shape)
        spread = DTensor.from_local(grid, mesh, [Replicate()] * mesh.ndim, run_check=False)
        mine = spread.redistribute(mesh, t.placements).to_local()
        if mine.numel() == 0:
            out.append(torch.empty(0, dtype=torch.int64, device=local.device))
            continue
        out.append(mine[tuple(slice(None) if i == d else 0 for i in range(t.ndim))].clone())
    return out


@torch.no_grad()
def load_into(module: nn.Module, sources: dict[str, Source], folder: Folder,
              optional_prefixes: tuple[str, ...] = ()) -> int:
    """Fill every parameter and persistent buffer of `module` (plain, FSDP2 or TP) from `folder`; a tensor
    without a source is an error unless its name starts with one of `optional_prefixes` (it then
    keeps its value). Returns the number of tensors loaded."""
    loaded = 0
    persistent = set(module.state_dict())
    for fqn, t in itertools.chain(module.named_parameters(), module.named_buffers()):
        if fqn not in persistent:
            continue  # a non-persistent buffer (running statistics) is not a weight
        src = sources.get(fqn)
        if src is None:
            if fqn.startswith(optional_prefixes):
                continue
            raise ValueError(f"{folder.path}: nothing in the folder for our '{fqn}'")
        folder.check(fqn, src, tuple(t.shape))
        index = local_indices(t)
        local = t.to_local() if isinstance(t, DTensor) else t
        value = folder.read_local(src, tuple(t.shape), index)
        if tuple(value.shape) != tuple(local.shape):
            raise ValueError(f"{folder.path}: read {tuple(value.shape)} for this rank's shard of '{fqn}', which "
                             f"holds {tuple(local.shape)}")
        local.copy_(value.to(device=local.device, dtype=local.dtype))
        loaded += 1
    return loaded
