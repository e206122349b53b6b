"""Parallel styles of the MoE block (applied by parallelize.py; the block itself has none).

`ExpertParallel`: the routed experts split over an `ep` mesh, each token row moved to the rank
holding its expert and back by all-to-all with uneven splits. `TokenwiseReplicated`: a per-token
module (the router's linear) with replicated weights run on each rank's own tokens under
sequence parallelism. `SumOverRanks`: per-sequence statistics summed over a sequence's ranks.

Written here rather than adapted from torchtitan 0.2.2's `ExpertParallel` (the structure is the
same: `distribute_module` with a dispatch input_fn and a combine output_fn): its regrouping of
received rows by local expert is a Triton kernel (`generate_permute_indices`) that does not run
on CPU, where the layout tests run, and it pads every expert's rows to an alignment that only
its grouped GEMM needs. Here the regrouping is a few index ops on the device.

One host sync per dispatch: the receiving sizes of the all-to-all (the rows other ranks send
this one) must be known on the host to allocate the buffer; the combine reuses them.

Shape legend: R rows routed on this rank (grouped by expert), E experts, L = E / ep local
experts, P ep ranks, N rows received (grouped by source rank, then local expert), I row width.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

__all__ = ["ExpertParallel", "SumOverRanks", "TokenwiseReplicated", "regroup_index"]


def regroup_index(counts_PL: Tensor, total: int) -> Tensor:
    """Index that reorders rows received grouped by (source rank, local expert) into groups by
    (local expert, source rank): `x_by_expert = x_received[index]`. `total` = counts_PL.sum()
    (known on the host), so nothing here waits for the device."""
    flat = counts_PL.reshape(-1)
    start_PL = (flat.cumsum(0) - flat).view_as(counts_PL)
    len_LP = counts_PL.t().reshape(-1)
    start_LP = start_PL.t().reshape(-1)
    new_start_LP = len_LP.cumsum(0) - len_LP
    shift = torch.repeat_interleave(start_LP - new_start_LP, len_LP, output_size=total)
    return shift + torch.arange(total, device=counts_PL.device)


def _all_to_all(x: Tensor, out_sizes: list[int], in_sizes: list[int], group) -> Tensor:
    """Rows to ranks (uneven sizes), differentiable: the backward sends the gradient back."""
    out = all_to_all_single_autograd(x.contiguous(), out_sizes, in_sizes, group)
    return torch.ops._c10d_functional.wait_tensor(out)


class ExpertParallel(ParallelStyle):
    """Routed experts [E, out, in] sharded on dim 0 over the `ep` mesh; the module's forward
    then sees only the rows of its L experts, grouped by expert, and their counts [L].

    One instance per module: it holds the sizes of the dispatch in flight until its combine.
    """

    def __init__(self):
        super().__init__()
        self._in_flight: tuple[list[int], list[int], Tensor] | None = None

    def _partition(self, name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        for pname, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(
                pname, nn.Parameter(distribute_tensor(param, mesh, [Shard(0)], src_data_rank=None)))

    def _dispatch(self, module: nn.Module, inputs: tuple[Tensor, Tensor], mesh: DeviceMesh):
        x_RI, counts_E = inputs
        group, ep = mesh.get_group(), mesh.size()
        with torch.no_grad():
            counts_recv = torch.empty_like(counts_E)
            dist.all_to_all_single(counts_recv, counts_E, group=group)
            counts_PL = counts_recv.view(ep, -1)
            sizes = torch.stack([counts_E.view(ep, -1).sum(1), counts_PL.sum(1)]).tolist()
        send, recv = sizes
        x_NI = _all_to_all(x_RI, recv, send, group)
        index = regroup_index(counts_PL, sum(recv))
        self._in_flight = (send, recv, index)
        return x_NI[index], counts_PL.sum(0)

    def _combine(self, module: nn.Module, y_NI: Tensor, mesh: DeviceMesh) -> Tensor:
        if self._in_flight is None:
            raise RuntimeError("ExpertParallel: a combine without its dispatch")
        send, recv, index = self._in_flight
        self._in_flight = None
        y_received = torch.empty_like(y_NI).index_copy(0, index, y_NI)
        return _all_to_all(y_received, send, recv, mesh.get_group())

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(module, device_mesh, partition_fn=self._partition,
                                 input_fn=self._dispatch, output_fn=self._combine)


class SumOverRanks(ParallelStyle):
    """The module's output (a plain tensor without gradient) summed over the mesh's ranks: for
    values each rank computed over its part of a sequence (the MoE block's per-sequence expert
    counts under sequence parallelism)."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def output_fn(mod, out: Tensor, mesh: DeviceMesh) -> Tensor:
            return DTensor.from_local(out, mesh, [Partial()], run_check=False).full_tensor()
        return distribute_module(module, device_mesh, output_fn=output_fn)


class TokenwiseReplicated(ParallelStyle):
    """A module that maps each token on its own (input [T, ...], tokens on dim 0), its parameters
    replicated over the mesh while each rank feeds its own tokens: the forward sees a DTensor
    sharded on tokens, so the weight gradient is summed over the ranks, and returns this rank's
    rows. Unlike `SequenceParallel` (distribute_module) it leaves the module's buffers plain
    tensors: the router's correction bias and token counts are per-rank state, not DTensors."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        for name, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(name, nn.Parameter(
                distribute_tensor(param, device_mesh, [Replicate()], src_data_rank=None),
                requires_grad=param.requires_grad))

        def tokens_in(mod, args):
            return (DTensor.from_local(args[0], device_mesh, [Shard(0)], run_check=False), *args[1:])

        def rows_out(mod, args, out):
            return out.to_local()

        module.register_forward_pre_hook(tokens_in)
        module.register_forward_hook(rows_out)
        return module
