"""Steps one small model three times with torch.optim.AdamW and with LocalShardAdamW under
FSDP2 (dp_shard = world), tensor parallel (tp = world, with a replicated norm weight) and
FSDP x TP on 2 x 2, and with a gradient laid out unlike its parameter (the fallback), and
records how the two runs differ and how many multi-tensor kernel calls of each optimizer step
got a DTensor.

Usage: torchrun --nproc-per-node N tests/workers/optim_worker.py OUT.json [cuda]
("cuda": NCCL, CUDA tensors and fused AdamW instead of gloo, CPU and foreach.)
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from titan_mimo.compat import LocalShardAdamW


class DTensorCalls(TorchFunctionMode):
    """Counts AdamW's multi-tensor kernel calls (`torch._foreach_*`, `torch._fused_*`) that
    receive a DTensor anywhere in their arguments (attribute reads are not counted)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.startswith(("_foreach_", "_fused_")) and any(
                isinstance(t, DTensor) for t in tree_leaves((args, kwargs))):
            self.count += 1
        return func(*args, **kwargs)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.down(torch.relu(self.up(x))))


DEVICE = "cuda" if sys.argv[2:] == ["cuda"] else "cpu"


def build(layout: str, world: int) -> nn.Module:
    torch.manual_seed(0)
    model = Tiny().to(DEVICE)
    if layout in ("tp", "fsdp_tp"):
        tp = world if layout == "tp" else 2
        mesh = init_device_mesh(DEVICE, (world // tp, tp), mesh_dim_names=("dp_shard", "tp"))
        parallelize_module(model, mesh["tp"], {"up": ColwiseParallel(), "down": RowwiseParallel(use_local_output=False)})
        # The norm weight is replicated over tp, as sequence-parallel norms are.
        for name, p in list(model.norm.named_parameters()):
            setattr(model.norm, name, nn.Parameter(DTensor.from_local(p.detach(), mesh["tp"], [Replicate()])))
        if layout == "fsdp_tp":
            fully_shard(model, mesh=mesh["dp_shard"])
    else:
        fully_shard(model, mesh=init_device_mesh(DEVICE, (world,), mesh_dim_names=("dp_shard",)))
    return model


def run(layout: str, opt_cls, world: int, misplace_grad: bool = False):
    model = build(layout, world)
    fused = DEVICE == "cuda"
    opt = opt_cls(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, fused=fused,
                  foreach=not fused)
    calls = []
    for step in range(3):
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(4, 8, generator=g).to(DEVICE)
        model(x).square().sum().backward()
        if misplace_grad:
            # A gradient replicated while its parameter is sharded: the group must step as DTensor.
            p = model.up.weight
            p.grad = p.grad.redistribute(p.device_mesh, [Replicate()] * p.device_mesh.ndim)
        mode = DTensorCalls()
        with mode:
            opt.step()
        calls.append(mode.count)
        opt.zero_grad()
    full = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().clone()
            for k, v in model.state_dict().items()}
    state = {k: v for k, v in opt.state_dict()["state"].items()}
    return full, state, calls


def main() -> None:
    if DEVICE == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo")
    world = dist.get_world_size()
    out = {}
    layouts = ["fsdp", "tp"] + (["fsdp_tp"] if world == 4 else [])
    for layout in layouts:
        for misplace in (False, True) if layout == "fsdp" else (False,):
            ref, _, ref_calls = run(layout, torch.optim.AdamW, world, misplace)
            got, got_state, got_calls = run(layout, LocalShardAdamW, world, misplace)
            diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
            init = {k: v.full_tensor().cpu() for k, v in build(layout, world).state_dict().items()}
            moved = max(float((ref[k] - init[k]).abs().max()) for k in ref)
            state_types = sorted({type(v).__name__ for s in got_state.values() for v in s.values()
                                  if isinstance(v, torch.Tensor) and v.dim() > 0})
            out[layout + ("_misplaced_grad" if misplace else "")] = {
                "max_param_diff": diff, "params_moved": moved, "ref_dtensor_calls": ref_calls,
                "dtensor_calls": got_calls, "state_types": state_types}
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
