"""FP8 training linears: torchao's `Float8Linear` swapped in for a module's `nn.Linear`s the way
torchtitan's `Float8LinearConverter` does it (torchtitan/components/quantization/float8.py),
checked on torchtitan 0.2.2 with torchao 0.18.0 (`TORCHAO_CHECKED`).

What is torchtitan's here: the recipe names ("rowwise": e4m3 with per-row scales; "tensorwise":
one scale per tensor, e5m2 gradients), the default layer filter (`module_filter_fn`: an
`nn.Linear` whose both dims divide by 16, the float8 tensor cores' rule, outside the `filter_fqns`
substrings) and the opt-in auto filter (torchao's `_auto_filter_for_recipe`, torchtitan's
"auto_filter_small_kn": also skip shapes torchao's H100 benchmarks found too small to pay).

Where we differ: torchtitan builds its converter from its own JobConfig and ParallelDims, and its
recipe path ignores `emulate`, so it could not run a recipe on a CPU; this adapter takes the
recipe, the filter and `emulate` as arguments (torchao's recipe config with `emulate` replaced).
Float8 all-gather under FSDP (tensorwise only in torchao; off by default in torchtitan) and its
scale precompute after the optimizer step are not wired.

A `Float8Linear` keeps the `nn.Linear`'s parameters (`weight`, `bias`) under the same names and
in the same dtype (the high-precision master weights; fp8 copies exist only inside a forward or
backward), so checkpoints of a float8 run and of a bf16 run are interchangeable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

__all__ = ["FLOAT8_RECIPES", "FLOAT8_FILTERS", "TORCHAO_CHECKED", "convert_to_float8", "float8_layer_filter",
           "needs_emulation"]

TORCHAO_CHECKED = "0.18.0"
"""The torchao release this adapter was checked on (the `test` and `gpu` extras install it)."""

FLOAT8_RECIPES = ("rowwise", "tensorwise")
"""torchao's `Float8LinearRecipeName`s we train with (torchtitan's `recipe_name` values)."""

FLOAT8_FILTERS = ("auto", "all")
"""Which eligible linears convert: "auto" (torchao's per-recipe size thresholds) or "all"."""

def float8_layer_filter(recipe: str, layers: str, keep_fqns: Sequence[str]) -> Callable[[nn.Module, str], bool]:
    """`(module, fqn) -> convert it?`: an `nn.Linear` whose FQN contains none of `keep_fqns`, with
    both weight dims divisible by 16; with `layers = "auto"` also large enough that torchao
    measured float8 faster for `recipe` (its H100 thresholds on the weight's [N, K]: rowwise
    skips N <= 2048, K <= 1024, and N <= 4096 with K <= 2048; tensorwise skips K <= 4096 with
    N <= 1024)."""
    if recipe not in FLOAT8_RECIPES:
        raise ValueError(f"float8 recipe {recipe!r} is not one of {FLOAT8_RECIPES}")
    if layers not in FLOAT8_FILTERS:
        raise ValueError(f"float8 layer filter {layers!r} is not one of {FLOAT8_FILTERS}")
    keep = list(keep_fqns)
    if layers == "auto":
        from torchao.float8 import _auto_filter_for_recipe
        return _auto_filter_for_recipe(recipe, filter_fqns=keep)
    from torchtitan.components.quantization.utils import module_filter_fn
    return partial(module_filter_fn, filter_fqns=keep)


def needs_emulation(device: torch.device) -> bool:
    """Whether float8 matmuls are emulated (fp8-rounded values multiplied in high precision, as
    torchao's and torchtitan's CPU tests run): on a CPU yes; on a GPU of compute capability 8.9+
    (Ada, Hopper, Blackwell) no; an older GPU has no float8 tensor cores: an error."""
    if device.type != "cuda":
        return True
    if torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(f"float8 training needs a GPU of compute capability 8.9 or later (Ada, Hopper, "
                         f"Blackwell); {torch.cuda.get_device_name(device)} has "
                         f"{torch.cuda.get_device_capability(device)}: set float8 = 'none'")
    return False


def convert_to_float8(model: nn.Module, recipe: str, *, layers: str, keep_fqns: Sequence[str],
                      emulate: bool, pad_inner_dim: bool = False) -> list[str]:
    """Swap the linears of `model` that `float8_layer_filter(recipe, layers, keep_fqns)` picks for
    torchao `Float8Linear`s (dynamic scaling by `recipe`), in place, keeping their parameters;
    works on a meta-device model. Returns the FQNs swapped, in module order.

    `pad_inner_dim` (torchao's option): zero-pad each float8 matmul's inner dimension to a
    multiple of 16, which `torch._scaled_mm` needs. A linear's feature dims pass the filter only if
    they divide by 16, but its weight gradient's inner dimension is the number of tokens in the
    micro-batch: set it where that need not divide by 16 (a ViT with a class token, 4097 tokens
    per 1024^2 image)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=emulate,
                                 pad_inner_dim=pad_inner_dim)
    convert_to_float8_training(model, config=config,
                               module_filter_fn=float8_layer_filter(recipe, layers, keep_fqns))
    return [fqn for fqn, mod in model.named_modules() if isinstance(mod, Float8Linear)]
