"""Optional GPU kernels for the Mamba-2 SSD scan, chosen by `HybridLMArgs.ssd_backend`.

"torch" is `ssd.ssd_chunked` (pure PyTorch, the reference and the CPU path). "mamba_ssm" is
mamba-ssm's Triton SSD kernels (the forward and backward of its `mamba_chunk_scan_combined`)
behind two custom ops, `titan_mimo::ssd_scan` and its backward, imported lazily when a mixer is
built with it.

mamba-ssm 2.3.2's package `__init__` imports its CUDA extension (`selective_scan_cuda`, used by
Mamba-1 only) unconditionally, so a source install without that build cannot `import mamba_ssm`
although the SSD path is pure Triton. We therefore try the normal import first and, if only the
package `__init__` fails, register a bare package object for `mamba_ssm` (its `__path__` only)
so the Triton submodules import without running `__init__`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

import torch
from torch import Tensor

from .ssd import ssd_chunked

__all__ = ["MISSING_MAMBA_SSM", "ssd_function"]

MISSING_MAMBA_SSM = (
    "ssd_backend='mamba_ssm' needs the mamba-ssm package (its Triton SSD kernels; the CUDA "
    "extension is not required): install the GPU extra, `pip install 'titan_mimo[gpu]'`, or put "
    "mamba-ssm's source folder on PYTHONPATH; or use ssd_backend='torch'"
)
_TRITON_MODULE = "mamba_ssm.ops.triton.ssd_combined"


def _import_mamba_ssm_triton() -> types.ModuleType:
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(MISSING_MAMBA_SSM)
    if "mamba_ssm" not in sys.modules:
        try:
            importlib.import_module("mamba_ssm")
        except ImportError:
            # Only the package __init__ failed (missing CUDA extension): import the Triton
            # modules under a bare package object instead.
            sys.modules.pop("mamba_ssm", None)
            package = types.ModuleType("mamba_ssm")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec
            sys.modules["mamba_ssm"] = package
    try:
        return importlib.import_module(_TRITON_MODULE)
    except ImportError as e:
        raise ImportError(f"{MISSING_MAMBA_SSM} (importing {_TRITON_MODULE} failed: {e})") from e


def _import_mamba_chunk_scan() -> Callable[..., Tensor]:
    """mamba-ssm's public entry point (its own autograd.Function): the benchmarks' peer."""
    return _import_mamba_ssm_triton().mamba_chunk_scan_combined


# The scan as a pair of custom ops (forward; backward) instead of mamba-ssm's autograd.Function:
# torch.compile keeps an opaque op inside the graph, so a per-block compiled Mamba2 block is one
# graph (forward and backward) rather than two with Python in between, and the projections,
# convs and norms on both sides of the scan fuse as one region. The ops call mamba-ssm's own
# forward and backward functions, the ones its autograd.Function calls, with the same saved
# tensors (the backward recomputes the chunk states from the inputs, as mamba-ssm does).
_KERNELS: dict[str, Callable] = {}


def _kernels() -> dict[str, Callable]:
    if not _KERNELS:
        module = _import_mamba_ssm_triton()
        _KERNELS["fwd"] = module._mamba_chunk_scan_combined_fwd
        _KERNELS["bwd"] = module._mamba_chunk_scan_combined_bwd
    return _KERNELS


@torch.library.custom_op("titan_mimo::ssd_scan", mutates_args=())
def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int) -> Tensor:
    """y = SSD(x, dt, A, B, C) + D * x by mamba-ssm's Triton kernels (x: B S H P, dt: B S H,
    A: H, B/C: B S G N, D: H); y contiguous in x's dtype."""
    out, *_ = _kernels()["fwd"](x, dt, A, B, C, chunk_size, D=D)
    return out.contiguous()


@ssd_scan.register_fake
def _(x, dt, A, B, C, D, chunk_size):
    return x.new_empty(x.shape)


@torch.library.custom_op("titan_mimo::ssd_scan_backward", mutates_args=())
def ssd_scan_backward(dy: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                      y: Tensor, chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dx, ddt, dA, dB, dC, dD) of `ssd_scan`, each contiguous in its input's dtype."""
    dx, ddt, dA, dB, dC, dD, *_ = _kernels()["bwd"](dy, x, dt, A, B, C, y, chunk_size, D=D)
    return tuple(g.to(t.dtype).contiguous() for g, t in zip((dx, ddt, dA, dB, dC, dD), (x, dt, A, B, C, D)))


@ssd_scan_backward.register_fake
def _(dy, x, dt, A, B, C, D, y, chunk_size):
    return tuple(t.new_empty(t.shape) for t in (x, dt, A, B, C, D))


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, chunk_size = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, output)
    ctx.chunk_size = chunk_size


def _backward(ctx, dy):
    x, dt, A, B, C, D, y = ctx.saved_tensors
    return (*ssd_scan_backward(dy, x, dt, A, B, C, D, y, ctx.chunk_size), None)


ssd_scan.register_autograd(_backward, setup_context=_setup_context)


def _mamba_ssm_scan() -> Callable[..., Tensor]:
    _kernels()  # import now: a missing mamba-ssm fails when the mixer is built, not mid-step

    def ssd_mamba_ssm(x_BSHP: Tensor, dt_BSH: Tensor, A_H: Tensor, B_BSGN: Tensor,
                      C_BSGN: Tensor, chunk_size: int, D_H: Tensor | None = None) -> Tensor:
        """Same contract as `ssd_chunked` (dt already softplus'd, output in x's dtype)."""
        if not x_BSHP.is_cuda:
            raise ValueError("ssd_backend='mamba_ssm' runs on CUDA tensors only; use 'torch' on CPU")
        if D_H is None:
            D_H = A_H.new_zeros(A_H.shape)
        return ssd_scan(x_BSHP, dt_BSH, A_H, B_BSGN, C_BSGN, D_H, chunk_size)

    return ssd_mamba_ssm


def ssd_function(backend: str) -> Callable[..., Tensor]:
    """The scan for `backend`; raises ImportError naming the `gpu` extra if a kernel is missing."""
    if backend == "torch":
        return ssd_chunked
    if backend == "mamba_ssm":
        return _mamba_ssm_scan()
    raise ValueError(f"ssd_backend={backend!r} is unknown; choose 'torch' or 'mamba_ssm'")
