"""A module's block stack as CUDA graphs (`modules.<name>.cuda_graphs`): the language model's
forward through all its blocks is one graph and its backward another, so a step queues two graph
launches instead of the thousands of kernels it otherwise issues one by one: what a host-bound
model needs (hybrid_2b on an H200 turned out device-bound: the same step time, 9.6 GiB less
memory; docs/benchmarks.md).

The capture is torch's `make_graphed_callables` (Megatron captures its layers the same way), done
on the stack's first call with gradients, where the forward's real context is in place: the
autocast of a module on one rank (built with its weight cache off, which capture needs), the
compiled blocks' activation memory budget, the micro-batch's shape. Its warm-up iterations
compile the blocks and tune their kernels before anything is recorded.

What replaying a graph assumes, and how each assumption is kept:
- A training forward: a call without gradients (evaluation), in eval mode, or with another
  shape or dtype runs the blocks as before, uncaptured (the graph also holds what only training
  does, e.g. an MoE router counting its tokens).
- A graph's saved activations are overwritten by the next replay: a forward with gradients
  before the previous one's backward raises instead of computing wrong gradients (the one-rank
  language loop runs each micro-batch's forward and backward back to back).
- A replayed backward writes the parameters' gradients into the same static buffers each time,
  and autograd may keep such a buffer as `param.grad` itself: with more than one micro-batch per
  step the first micro-batch's gradients are copied out, so the next replay cannot overwrite what
  accumulates.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["graph_on_first_call"]


def graph_on_first_call(stack: nn.Module, microbatches_per_step: int) -> None:
    """Make `stack` (a module taking and returning one tensor, with no hooks of its own) capture
    itself as a forward and a backward CUDA graph on its first call with gradients, and replay
    them from then on. `microbatches_per_step`: how many forwards and backwards accumulate into
    one optimizer step (> 1 copies the first micro-batch's gradients out of the graph's buffers)."""
    eager = stack.forward
    state: dict = {"graphed": None, "shape": None, "pending": False}

    def forward(h: Tensor) -> Tensor:
        if state["graphed"] is None:
            if not torch.is_grad_enabled() or not h.is_cuda:
                return eager(h)
            _capture(stack, eager, h, state, microbatches_per_step)
        if (not torch.is_grad_enabled() or not stack.training
                or (h.shape, h.dtype, h.device) != state["shape"]):
            return eager(h)
        if state["pending"]:
            raise RuntimeError("cuda_graphs: a forward of the captured blocks ran before the backward of "
                               "the previous one; a replay would overwrite the activations that backward "
                               "needs. Captured blocks need each micro-batch's backward before the next "
                               "forward (the language model on one rank without pipelining)")
        out = state["graphed"](h)
        if out.requires_grad:
            state["pending"] = True
            out.register_hook(_clear(state))
        return out

    stack.forward = forward


def _clear(state: dict):
    def hook(grad: Tensor) -> Tensor:
        state["pending"] = False
        return grad
    return hook


def _capture(stack: nn.Module, eager, h: Tensor, state: dict, microbatches_per_step: int) -> None:
    # make_graphed_callables graphs a module's `forward` and replaces it: it captures the blocks'
    # own forward, then hands its replacement to the dispatch above.
    dispatch = stack.forward
    stack.forward = eager
    # The warm-up and capture run the forward four times on the sample (the real micro-batch's
    # values): buffers the forward updates (an MoE router's token counts) are put back after.
    sample = h.detach().clone().requires_grad_(h.requires_grad)
    buffers = [(b, b.clone()) for b in stack.buffers()]
    with torch.autocast("cuda", enabled=torch.is_autocast_enabled("cuda"),
                        dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False):
        torch.cuda.make_graphed_callables(stack, (sample,))
    with torch.no_grad():
        for b, value in buffers:
            b.copy_(value)
    state["graphed"], state["shape"] = stack.forward, (h.shape, h.dtype, h.device)
    stack.forward = dispatch
    if microbatches_per_step > 1:
        for p in stack.parameters():
            if p.requires_grad:
                p.register_hook(_own_first_grad(p))


def _own_first_grad(p: nn.Parameter):
    def hook(grad: Tensor) -> Tensor:
        # The first gradient of a step becomes `p.grad`; a copy keeps it out of the graph's buffer.
        return grad.clone() if p.grad is None else grad
    return hook
