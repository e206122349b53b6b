"""Optional GPU kernels for the Mamba-2 SSD scan, chosen by `HybridLMArgs.ssd_backend`.

"torch" is `ssd.ssd_chunked` (pure PyTorch, the reference and the CPU path). "mamba_ssm" runs
mamba-ssm's Triton SSD kernels, imported lazily when a mixer is built with it, as titan_mimo's
custom ops with a leaner backward (`ssd_mamba_ssm`; `keep_states`: the forward's chunk states are
kept instead of recomputed).

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
from .ssd_mamba_ssm import is_custom_op_scan, scan_function

__all__ = ["MISSING_MAMBA_SSM", "ssd_function"]

MISSING_MAMBA_SSM = (
    "ssd_backend='mamba_ssm' needs the mamba-ssm package (its Triton SSD kernels; the CUDA "
    "extension is not required): install the GPU extra, `pip install 'titan_mimo[gpu]'`, or put "
    "mamba-ssm's source folder on PYTHONPATH; or use ssd_backend='torch'"
)
_TRITON_MODULE = "mamba_ssm.ops.triton.ssd_combined"


def _import_mamba_chunk_scan(keep_states: bool = False) -> Callable[..., Tensor]:
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
        module = importlib.import_module(_TRITON_MODULE)
    except ImportError as e:
        raise ImportError(f"{MISSING_MAMBA_SSM} (importing {_TRITON_MODULE} failed: {e})") from e
    return scan_function(module, keep_states)


def _mamba_ssm_scan(keep_states: bool) -> Callable[..., Tensor]:
    kernel = _import_mamba_chunk_scan(keep_states)

    def ssd_mamba_ssm(x_BSHP: Tensor, dt_BSH: Tensor, A_H: Tensor, B_BSGN: Tensor,
                      C_BSGN: Tensor, chunk_size: int, D_H: Tensor | None = None) -> Tensor:
        """Same contract as `ssd_chunked` (dt already softplus'd, output in x's dtype)."""
        if not x_BSHP.is_cuda:
            raise ValueError("ssd_backend='mamba_ssm' runs on CUDA tensors only; use 'torch' on CPU")
        return kernel(x_BSHP, dt_BSH, A_H, B_BSGN, C_BSGN, chunk_size, D=D_H)

    if is_custom_op_scan(kernel):
        # torch.library custom ops: a per-block torch.compile traces the mixer as one graph.
        return ssd_mamba_ssm
    # mamba-ssm's own autograd.Function (the fallback), which Dynamo cannot trace: a per-block
    # torch.compile breaks the graph around it and compiles the parts on either side.
    return torch.compiler.disable(ssd_mamba_ssm)


def ssd_function(backend: str, keep_states: bool = False) -> Callable[..., Tensor]:
    """The scan for `backend`; raises ImportError naming the `gpu` extra if a kernel is missing.
    `keep_states` (mamba_ssm only): the backward reads the forward's chunk states."""
    if backend == "torch":
        return ssd_chunked
    if backend == "mamba_ssm":
        return _mamba_ssm_scan(keep_states)
    raise ValueError(f"ssd_backend={backend!r} is unknown; choose 'torch' or 'mamba_ssm'")
