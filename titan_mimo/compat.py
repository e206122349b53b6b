"""The one place private torch APIs are used. Checked on torch 2.13 (CPU); torch 2.11 (GPU)
ships the same names."""

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.distributed._composable import checkpoint as composable_checkpoint

__all__ = ["composable_checkpoint", "foreach_mul_", "scope_activation_memory_budget", "time_stage_work"]


def scope_activation_memory_budget(module: nn.Module, budget: float) -> None:
    """Graphs that torch.compile builds while `module` runs its forward are partitioned for
    `budget`, in (0, 1]: the share of the activation memory that the runtime-optimal partition
    would keep which they may keep, recomputing the cheapest of the rest in the backward (the
    setting torchtitan's activation checkpointing mode "memory_budget" makes).

    The setting (torch._functorch.config.activation_memory_budget) is global to the process and
    read when a graph is compiled, i.e. on a block's first forward call and on recompiles; so it
    is set around each forward of `module` and restored after it, and modules sharing a process
    (colocated) keep their own budgets.
    """
    saved: list[float] = []

    def enter(mod, args):
        saved.append(torch._functorch.config.activation_memory_budget)
        torch._functorch.config.activation_memory_budget = budget

    def leave(mod, args, output):
        if saved:  # empty if a pre-hook registered before ours raised (this hook always runs)
            torch._functorch.config.activation_memory_budget = saved.pop()

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave, always_call=True)


def foreach_mul_(tensors: list, scalar: "float | torch.Tensor") -> None:
    """tensors[i] *= scalar for all i (a number or a 0-dim tensor), in one multi-tensor kernel per
    device and dtype (what torch.optim and clip_grad_norm_ use); the values of a loop of `mul_`."""
    torch._foreach_mul_(tensors, scalar)


# The methods a torch.distributed.pipelining schedule calls on a stage to do that stage's own
# work for one micro-batch (forward; backward, or its input and weight halves) and, once per
# step, its data-parallel gradient reduction. Between these calls a schedule only posts and
# waits on point-to-point transfers with the neighbouring stages.
_STAGE_WORK = ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk", "perform_reduce_grad")


def time_stage_work(stage, span: Callable[[], AbstractContextManager]) -> None:
    """Run every call a schedule makes into `stage`'s own work inside `span()`, a context
    manager that measures it.

    Schedules look these methods up on the stage object, so instance attributes shadow them.
    Only the outermost call is measured (some versions implement one of them through another);
    a method a torch version lacks is skipped (its work then happens inside another one).
    """
    depth = [0]
    for name in _STAGE_WORK:
        method = getattr(stage, name, None)
        if method is None:
            continue

        @functools.wraps(method)
        def timed(*args, _method=method, **kwargs):
            if depth[0]:
                return _method(*args, **kwargs)
            depth[0] += 1
            try:
                with span():
                    return _method(*args, **kwargs)
            finally:
                depth[0] -= 1

        setattr(stage, name, timed)


def first_stage_forwards_ahead(schedule) -> int | None:
    """How far stage 0's forwards run ahead of its backwards in a multi-stage schedule's own
    action list (`pipeline_order`, pp rank 0): max over micro-batches i of (stage-0 forwards
    before the backward of i) - i. None for single-stage schedules, which have no action list.
    """
    order = getattr(schedule, "pipeline_order", None)
    if order is None:
        return None
    forwards, backwards, ahead = 0, 0, 0
    for action in order[0]:
        if action is None or action.stage_index != 0:
            continue
        kind = action.computation_type.name
        if kind == "FORWARD":
            forwards += 1
        elif kind in ("FULL_BACKWARD", "BACKWARD_INPUT"):
            ahead = max(ahead, forwards - backwards)
            backwards += 1
    return ahead
