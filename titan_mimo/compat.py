"""The one place private torch APIs are used: torch's composable checkpoint, the functorch and
Inductor settings, multi-tensor kernels, the device-side assert, the pipelining stage's work
methods and action list, and AdamW's `_init_group`. Checked on torch 2.13 (CPU) and 2.11 (GPU)
(`TORCH_CHECKED`); tests/test_compat.py fails when the installed torch is another version or
any of these changed shape."""

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn
from torch.distributed._composable import checkpoint as composable_checkpoint
from torch.distributed.tensor import DTensor

__all__ = ["TORCH_CHECKED", "LocalShardAdamW", "assert_on_device", "composable_checkpoint",
           "emulate_precision_casts", "enable_coordinate_descent_tuning", "first_stage_forwards_ahead",
           "foreach_mul_", "scope_activation_memory_budget", "time_stage_work"]

TORCH_CHECKED = ("2.11", "2.13")
"""torch releases (major.minor) every function here was checked on."""


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


def enable_coordinate_descent_tuning() -> None:
    """Inductor tunes the launch configuration of the kernels it generates by coordinate descent,
    in this process from now on (`torch._inductor.config.coordinate_descent_tuning`: read when a
    graph's kernels are generated, backward graphs on the first backward, so it is set for the
    process rather than around a module's forward)."""
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = True


def emulate_precision_casts() -> None:
    """Inductor rounds low-precision intermediates as eager does (`torch._inductor.config.
    emulate_precision_casts`), in this process from now on: torchtitan's workaround for float8
    rowwise, whose recomputed casts could otherwise differ from the forward's
    (pytorch/pytorch#150859, torchtitan#1108)."""
    import torch._inductor.config as inductor_config

    inductor_config.emulate_precision_casts = True


def assert_on_device(condition: Tensor, message: str) -> None:
    """Fail with `message` where the device evaluates `condition` false, without the host
    waiting for it (`torch._assert_async`)."""
    torch._assert_async(condition, message)


def foreach_mul_(tensors: list, scalar: "float | torch.Tensor") -> None:
    """tensors[i] *= scalar for all i (a number or a 0-dim tensor), in one multi-tensor kernel per
    device and dtype (what torch.optim and clip_grad_norm_ use); the values of a loop of `mul_`."""
    torch._foreach_mul_(tensors, scalar)


# The methods a torch.distributed.pipelining schedule calls on a stage to do that stage's own
# work for one micro-batch (forward; backward, or its input and weight halves) and, once per
# step, its data-parallel gradient reduction. Between these calls a schedule only posts and
# waits on point-to-point transfers with the neighbouring stages.
_STAGE_WORK = ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk", "perform_reduce_grad")


def time_stage_work(stage, span: Callable[[str, int | None], AbstractContextManager]) -> None:
    """Run every call a schedule makes into `stage`'s own work inside `span(work, mb)`, a context
    manager that measures it: `work` is the method's name, `mb` the micro-batch (chunk) it works
    on, None for the gradient reduction.

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
        def timed(*args, _method=method, _name=name, **kwargs):
            if depth[0]:
                return _method(*args, **kwargs)
            depth[0] += 1
            try:
                with span(_name, _chunk_id(_name, args, kwargs)):
                    return _method(*args, **kwargs)
            finally:
                depth[0] -= 1

        setattr(stage, name, timed)


def _chunk_id(work: str, args: tuple, kwargs: dict) -> int | None:
    """The micro-batch a stage work call is for: the `*_one_chunk` methods' first argument
    (`fwd_chunk_id` / `bwd_chunk_id`)."""
    if not work.endswith("_one_chunk"):
        return None
    if args:
        return int(args[0])
    return int(kwargs.get("fwd_chunk_id", kwargs.get("bwd_chunk_id")))


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


def _laid_out_alike(params: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
    """Every DTensor gradient on its parameter's mesh with its parameter's placements (not,
    say, still Partial): then elementwise work on the local tensors is the DTensor result."""
    for p, g in zip(params, grads, strict=True):
        if isinstance(p, DTensor) != isinstance(g, DTensor):
            return False
        if isinstance(p, DTensor) and (p.device_mesh != g.device_mesh or p.placements != g.placements):
            return False
    return True


class LocalShardAdamW(torch.optim.AdamW):
    """torch.optim.AdamW (same arguments, same state dict), stepping each parameter group on
    the local tensors of its DTensors. A group whose gradients are not laid out like their
    parameters steps through DTensor as before, so the result never depends on which path ran.
    Plain tensors (no FSDP, no TP) are untouched.

    Why: FSDP2 and tensor parallel leave parameters, gradients and AdamW's state as DTensors, and
    torch.optim.AdamW then runs its multi-tensor kernels through DTensor's dispatch: sharding
    propagation over lists of hundreds of tensors on every step, host time that grows with the
    number of parameters (the GPU profiles of the 2.6B colocated model: 176 ms of
    `PythonSubclass` per step, on a step the host was already the bottleneck of). AdamW is
    elementwise, so on shards laid out like their parameters it computes exactly what the DTensor
    step computes. The state itself stays DTensor (`zeros_like` of the parameter), so
    `state_dict`, DCP checkpoints and resharded resumes see what they always saw. The hook is
    AdamW's private `_init_group`, the one place a step collects a group's tensors."""

    def _init_group(self, group, params_with_grad, grads, *state_lists):
        # torch.optim.Adam.step collects a group's tensors here (creating missing state as
        # zeros_like of the parameter: DTensor state) and then hands the lists to its
        # functional kernel; swapping the lists' entries for local tensors is all it takes.
        has_complex = super()._init_group(group, params_with_grad, grads, *state_lists)
        if any(isinstance(p, DTensor) for p in params_with_grad) and _laid_out_alike(params_with_grad, grads):
            # Optimizer.step runs without grad, where to_local() is the local tensor itself.
            for tensors in (params_with_grad, grads, *state_lists):
                tensors[:] = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
        return has_complex
