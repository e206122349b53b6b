"""Pieces every model shares: the deterministic, layout-independent init protocol.

The trainer builds models on the meta device, parallelizes them, and only then materialises
parameters. For every parameter (by its *global* fully-qualified name) it creates a plain fp32 CPU
tensor of the full, unsharded shape, seeds a generator from (seed, fqn) and calls
`init_parameter(owner_module, param_name, t, g)`; each rank then keeps its own shard of `t`.
Because a value depends only on (seed, fqn) and the full shape, every placement — one process,
FSDP, TP, PP — starts from bit-identical weights. That is the root of layout invariance.

Modules with parameters the defaults below do not know (Mamba2's A_log, the ViT position table)
define `init_param(self, name, t, g)`; it must fill `t` in place using only `g` for randomness.
Modules with buffers (the MoE router's correction bias) define `init_buffer(self, name, t)`,
which fills `t` in place without randomness (`init_buffers`).
"""

import hashlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

__all__ = [
    "INIT_STD",
    "RMSNorm",
    "fused_linears",
    "init_buffers",
    "init_model_for_testing",
    "init_parameter",
    "local_tensor",
    "param_generator",
    "to_device",
]

RMSNorm = nn.RMSNorm

INIT_STD = 0.02
"""Standard deviation of the default (truncated at ±2σ) normal init of linears and embeddings."""


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Host tensor -> `device` without waiting for the device.

    A plain `.to(cuda)` from pageable memory synchronises the stream after its copy, so the
    host would wait for every kernel already queued before it queues the next one. Staged
    through pinned memory the copy is asynchronous; the pinned buffer is not reused until the
    copy has run (the caching host allocator records it).
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def param_generator(seed: int, fqn: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator (CPU unless `device` says otherwise) seeded from (seed, fqn) with a stable hash.

    Python's `hash()` is salted per process, so ranks would disagree; sha256 is stable across
    processes, machines and Python versions.
    """
    digest = hashlib.sha256(f"{seed}/{fqn}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return g


def init_parameter(module: nn.Module, name: str, t: Tensor, g: torch.Generator) -> None:
    """Fill `t` (the full shape of `module.<name>`) in place, drawing randomness only from `g`.

    A module's own `init_param(name, t, g)` wins; otherwise the defaults for the standard layers.
    Unknown parameters are an error rather than a silent default, so a new layer cannot slip into
    training with an arbitrary init.
    """
    if hasattr(module, "init_param"):
        module.init_param(name, t, g)
        return
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            if name == "weight":
                nn.init.trunc_normal_(t, 0.0, INIT_STD, -2 * INIT_STD, 2 * INIT_STD, generator=g)
                return
            if name == "bias":
                t.zero_()
                return
        elif isinstance(module, nn.Embedding) and name == "weight":
            nn.init.normal_(t, 0.0, INIT_STD, generator=g)
            return
        elif isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
            if name == "weight":
                t.fill_(1.0)
                return
            if name == "bias":
                t.zero_()
                return
    raise ValueError(
        f"init_parameter: no init rule for parameter {name!r} of {type(module).__name__}; "
        f"give {type(module).__name__} an init_param(name, t, g) method"
    )


def init_buffers(model: nn.Module) -> None:
    """Fill every buffer in place by its owner's `init_buffer(name, t)`: after a meta-device build
    and `to_empty` buffers hold garbage, like parameters. A buffer whose owner has no rule is an
    error, for the same reason as in `init_parameter`."""
    with torch.no_grad():
        for owner in model.modules():
            for name, buf in owner.named_buffers(recurse=False):
                if not hasattr(owner, "init_buffer"):
                    raise ValueError(f"init_buffers: no init rule for buffer {name!r} of "
                                     f"{type(owner).__name__}; give it an init_buffer(name, t) method")
                owner.init_buffer(name, buf)


def init_model_for_testing(model: nn.Module, seed: int) -> None:
    """Initialise a materialised (non-meta) model exactly as the trainer does after sharding.

    Used by tests and by the single-process reference run: same fqn-seeded generators, same
    full-shape fp32 tensors, so its weights equal those of any parallel layout.
    """
    for fqn, param in model.named_parameters():
        owner_fqn, _, name = fqn.rpartition(".")
        owner = model.get_submodule(owner_fqn)
        t = torch.empty(param.shape, dtype=torch.float32, device="cpu")
        init_parameter(owner, name, t, param_generator(seed, fqn))
        with torch.no_grad():
            param.copy_(t)
    init_buffers(model)


def local_tensor(t: Tensor) -> Tensor:
    """This rank's shard of a parameter that a parallelize plan turned into a DTensor.

    Used where a model combines a per-channel parameter with activations that tensor-parallel
    projections hand over as plain local tensors (Mamba2's A_log, D, dt_bias, conv and gated-norm
    weights): DTensor refuses to mix with plain tensors, and the local shard covers exactly the
    local channels. A no-op for plain tensors; differentiable, so gradients reach the DTensor.
    """
    return t.to_local() if isinstance(t, DTensor) else t


def fused_linears(x: Tensor, linears: list[nn.Linear]) -> list[Tensor]:
    """[lin(x) for lin in linears], computed as ONE GEMM over the concatenated weights.

    Several projections of the same input (q/k/v, Mamba2's z/x/B/C/dt) stay separate Linear
    modules so tensor parallelism can column-shard each one, but one wide GEMM is faster than
    several narrow ones (and its backward is one input-gradient GEMM instead of a GEMM per
    projection plus the sums). The outputs are views of the wide result. The weight concat is a
    copy of the weights per call, small next to the GEMM on a real batch. Falls back to calling
    each module where a wrapper owns the Linear's semantics: DTensor weights or input (tensor
    parallel hooks), or a Linear subclass (e.g. a float8 swap). In fp32 the values equal the
    separate GEMMs' up to round-off (BLAS may block the wider GEMM differently).
    """
    weights = [lin.weight for lin in linears]
    if (isinstance(x, DTensor) or any(type(lin) is not nn.Linear for lin in linears)
            or any(isinstance(w, DTensor) for w in weights)):
        return [lin(x) for lin in linears]
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) and not all(has_bias):
        return [lin(x) for lin in linears]
    bias = torch.cat([lin.bias for lin in linears]) if all(has_bias) else None
    out = F.linear(x, torch.cat(weights), bias)
    return list(out.split([w.shape[0] for w in weights], dim=-1))
