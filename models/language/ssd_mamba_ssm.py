"""mamba-ssm's Triton SSD scan with a leaner backward: what `ssd_backend="mamba_ssm"` runs.

The forward is mamba-ssm's (`_mamba_chunk_scan_combined_fwd`) and the backward runs the same
Triton kernels as its `_mamba_chunk_scan_combined_bwd`, restricted to what `Mamba2Mixer` calls (no
z gate, dt bias, initial states or seq_idx), with two changes:

1. **No reduction over a split of size one** (always). mamba-ssm's dB, dC and dCB wrappers write
   fp32 partial sums per head split and add them up with `.sum(2)`; when the heads of a group fit
   one program (every shape we train: the split is 1) that sum is a full fp32 copy of dCB, dB and
   dC (0.39 ms per layer and step at 3 x 8192 tokens on an H100). We take the single split as a
   view instead, and still sum when there are several. Same numbers, no extra memory.
2. **The forward's chunk states kept** (`keep_states=True`, `HybridLMArgs.ssd_keep_states`).
   mamba-ssm's backward recomputes the per-chunk states and their passing (`_chunk_state_fwd`,
   `_state_passing_fwd`: 0.35 ms per layer and step at 3 x 8192 tokens). Kept, the backward reads
   the bf16 states the forward's output was computed from: the dC kernel gets exactly the values
   mamba-ssm's backward rounds to bf16 for it, only the state passing's dA gradient reads them in
   bf16 where mamba-ssm reads its fp32 recompute. The cost is H·P·N·2/chunk bytes per token and
   layer (4 KiB on hybrid_2b: 2.2 GB at 3 x 8192 tokens), which is why it is a choice.

dA's cumsum and the chunked dt (4·H bytes per token each) are always kept, not recomputed.

`scan_function()` returns this scan when mamba-ssm's private functions and the three kernels'
signatures are those of the 2.3.x releases it was written against (`MAMBA_SSM_CHECKED`), and
otherwise mamba-ssm's own `mamba_chunk_scan_combined` with a warning, so a mamba-ssm upgrade
degrades to the stock backward instead of launching kernels with wrong arguments;
tests/models/test_ssd_mamba_ssm.py fails on any other release. This module is the one place
that reaches into mamba-ssm: its import (`import_scan`) and its private kernels.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import math
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["MAMBA_SSM_CHECKED", "MISSING_MAMBA_SSM", "SSD_COMBINED_MODULE", "import_scan", "is_custom_op_scan",
           "scan_function", "ssd_scan"]

MAMBA_SSM_CHECKED = "2.3.2"
"""The mamba-ssm release (2.3.2 and its post releases) whose private functions and kernel
signatures this module was checked against."""


# The arguments our wrappers pass to each kernel (by name), plus the autotuned block sizes.
_AUTOTUNED = {"BLOCK_SIZE_M", "BLOCK_SIZE_N"}


def _strides(prefix: str, t: Tensor | None, **dims: int) -> dict[str, int]:
    """{prefix + name: t.stride(dim)} for each name=dim (zeros for a missing tensor)."""
    return {prefix + name: (t.stride(dim) if t is not None else 0) for name, dim in dims.items()}


class _Kernels:
    """mamba-ssm's private SSD functions and kernels, checked against what this module passes."""

    def __init__(self) -> None:
        import triton
        from mamba_ssm.ops.triton import ssd_chunk_scan, ssd_chunk_state, ssd_combined
        from mamba_ssm.ops.triton.ssd_bmm import _bmm_chunk_bwd, _bmm_chunk_fwd
        from mamba_ssm.ops.triton.ssd_state_passing import _state_passing_bwd
        from mamba_ssm.utils.determinism import (
            alloc_tile_workspace,
            finalize_tile_workspace,
            use_deterministic_mode,
        )

        self.triton = triton
        self.combined_fwd = ssd_combined._mamba_chunk_scan_combined_fwd
        self.bwd_dx = ssd_combined._chunk_scan_chunk_state_bwd_dx
        self.bwd_dstates = ssd_chunk_scan._chunk_scan_bwd_dstates
        self.bwd_ddAcs_stable = ssd_chunk_scan._chunk_scan_bwd_ddAcs_stable
        self.chunk_state_fwd = ssd_combined._chunk_state_fwd
        self.state_passing_fwd = ssd_combined._state_passing_fwd
        self.cumsum_bwd = ssd_chunk_state._chunk_cumsum_bwd
        self.bmm_fwd, self.bmm_bwd = _bmm_chunk_fwd, _bmm_chunk_bwd
        self.state_passing_bwd = _state_passing_bwd
        self.alloc_tile_workspace = alloc_tile_workspace
        self.finalize_tile_workspace = finalize_tile_workspace
        self.use_deterministic_mode = use_deterministic_mode
        self.db_kernel = ssd_chunk_state._chunk_state_bwd_db_kernel
        self.db_min_block_n = ssd_chunk_state._CHUNK_STATE_BWD_DB_MIN_BLOCK_N
        self.dc_kernel = ssd_chunk_scan._chunk_scan_bwd_dc_kernel
        self.dc_min_block_n = ssd_chunk_scan._CHUNK_SCAN_BWD_DC_MIN_BLOCK_N
        self.dcb_kernel = ssd_chunk_scan._chunk_scan_bwd_dcb_kernel

    def check(self) -> str | None:
        """None if every kernel takes exactly the arguments our wrappers pass, else the first
        difference (the kernels' signatures changed in the installed mamba-ssm)."""
        for kernel, passed in ((self.db_kernel, _DB_ARGS), (self.dc_kernel, _DC_ARGS),
                               (self.dcb_kernel, _DCB_ARGS)):
            names = set(getattr(getattr(kernel, "fn", kernel), "arg_names", ()))
            if names != set(passed) | _AUTOTUNED:
                return (f"{getattr(getattr(kernel, 'fn', kernel), '__name__', kernel)} takes "
                        f"{sorted(names ^ (set(passed) | _AUTOTUNED))} unlike mamba-ssm 2.3.x")
        return None

    # --- dB, dC, dCB without the sum over a head split of one ------------------------------

    def _split(self, batch: int, nchunks: int, nheads: int, ngroups: int, device) -> tuple[int, int]:
        # mamba-ssm's choice of heads per program (same formula, so the same kernels run).
        ratio = nheads // ngroups
        sm_count = torch.cuda.get_device_properties(device).multi_processor_count
        per_program = max(min(math.ceil(batch * nchunks * nheads / sm_count), ratio), 1)
        return per_program, self.triton.cdiv(ratio, per_program)

    @staticmethod
    def _sum_splits(t: Tensor) -> Tensor:
        return t[:, :, 0] if t.shape[2] == 1 else t.sum(2)

    def _launch(self, kernel, device, m_extent: int, n_extent: int, programs_yz: tuple[int, int],
                **kwargs: Any) -> None:
        """kernel on mamba-ssm's grid: (M tiles x N tiles of the autotuned block, *programs_yz)."""
        cdiv = self.triton.cdiv
        grid = lambda META: (
            cdiv(m_extent, META["BLOCK_SIZE_M"]) * cdiv(n_extent, META["BLOCK_SIZE_N"]), *programs_yz)
        with torch.cuda.device(device.index):
            kernel[grid](**kwargs)

    def chunk_state_bwd_db(self, x: Tensor, dt: Tensor, dA_cumsum: Tensor, dstates: Tensor,
                           B: Tensor, ngroups: int) -> tuple[Tensor, Tensor]:
        """mamba-ssm's `_chunk_state_bwd_db` with B given: (dB in fp32, ddA_cumsum)."""
        batch, seqlen, nheads, headdim = x.shape
        nchunks, chunk_size = dt.shape[2], dt.shape[3]
        dstate = dstates.shape[-1]
        deterministic = self.use_deterministic_mode()
        ddA, stride_tile = self.alloc_tile_workspace(
            (batch, nheads, nchunks, chunk_size), math.ceil(dstate / self.db_min_block_n),
            torch.float32, x.device, deterministic, zero_init=True)
        per_program, nsplits = self._split(batch, nchunks, nheads, ngroups, x.device)
        dB = torch.empty(batch, seqlen, nsplits, ngroups, dstate, device=x.device, dtype=torch.float32)
        self._launch(
            self.db_kernel, x.device, chunk_size, dstate, (batch * nchunks, nsplits * ngroups),
            x_ptr=x, dstates_ptr=dstates, b_ptr=B, dt_ptr=dt, dA_cumsum_ptr=dA_cumsum,
            seq_idx_ptr=None, db_ptr=dB, ddA_cumsum_ptr=ddA,
            chunk_size=chunk_size, dstate=dstate, hdim=headdim, batch=batch, seqlen=seqlen,
            nheads=nheads, nheads_per_program=per_program, ngroups=ngroups,
            **_strides("stride_x_", x, batch=0, seqlen=1, head=2, hdim=3),
            **_strides("stride_dstates_", dstates, batch=0, chunk=1),
            **_strides("stride_states_", dstates, head=2, hdim=3, dstate=4),
            **_strides("stride_b_", B, batch=0, seqlen=1, head=2, dstate=3),
            **_strides("stride_dt_", dt, batch=0, chunk=2, head=1, csize=3),
            **_strides("stride_dA_cs_", dA_cumsum, batch=0, chunk=2, head=1, csize=3),
            stride_seq_idx_batch=0, stride_seq_idx_seqlen=0,
            **_strides("stride_db_", dB, batch=0, seqlen=1, split=2, group=3, dstate=4),
            **_strides("stride_ddA_cs_", ddA, batch=0, chunk=2, head=1, csize=3),
            stride_ddA_tile=stride_tile,
            HAS_DDA_CS=True, HAS_SEQ_IDX=False, DETERMINISTIC_REDUCTION=deterministic,
            BLOCK_SIZE_K=max(self.triton.next_power_of_2(headdim), 16),
        )
        ddA = self.finalize_tile_workspace(ddA, deterministic)
        # As in mamba-ssm: the first position of each chunk does not reach the chunk's state.
        torch.cumsum(ddA, dim=-1, out=ddA)
        return self._sum_splits(dB), ddA

    def chunk_scan_bwd_dC(self, prev_states: Tensor, dA_cumsum: Tensor, dout: Tensor, C: Tensor,
                          ngroups: int) -> tuple[Tensor, Tensor]:
        """mamba-ssm's `_chunk_scan_bwd_dC` with C given: (dC in fp32, ddA_cumsum_prev)."""
        batch, nchunks, nheads, headdim, dstate = prev_states.shape
        seqlen = dout.shape[1]
        chunk_size = dA_cumsum.shape[-1]
        deterministic = self.use_deterministic_mode()
        ddA_prev, stride_tile = self.alloc_tile_workspace(
            (batch, nheads, nchunks, chunk_size), math.ceil(dstate / self.dc_min_block_n),
            torch.float32, dout.device, deterministic, zero_init=True)
        per_program, nsplits = self._split(batch, nchunks, nheads, ngroups, dout.device)
        dC = torch.empty(batch, seqlen, nsplits, ngroups, dstate, device=dout.device, dtype=torch.float32)
        self._launch(
            self.dc_kernel, dout.device, chunk_size, dstate, (batch * nchunks, nsplits * ngroups),
            dout_ptr=dout, prev_states_ptr=prev_states, C_ptr=C, dA_cumsum_ptr=dA_cumsum,
            seq_idx_ptr=None, dc_ptr=dC, ddA_cumsum_ptr=ddA_prev,
            chunk_size=chunk_size, dstate=dstate, hdim=headdim, batch=batch, seqlen=seqlen,
            nheads=nheads, nheads_per_program=per_program, ngroups=ngroups,
            **_strides("stride_dout_", dout, batch=0, seqlen=1, head=2, hdim=3),
            **_strides("stride_prev_states_", prev_states, batch=0, chunk=1, head=2, hdim=3, dstate=4),
            **_strides("stride_C_", C, batch=0, seqlen=1, head=2, dstate=3),
            **_strides("stride_dA_cs_", dA_cumsum, batch=0, chunk=2, head=1, csize=3),
            stride_seq_idx_batch=0, stride_seq_idx_seqlen=0,
            **_strides("stride_dc_", dC, batch=0, seqlen=1, split=2, group=3, dstate=4),
            **_strides("stride_ddA_cs_", ddA_prev, batch=0, chunk=2, head=1, csize=3),
            stride_ddA_tile=stride_tile,
            HAS_DDA_CS=True, HAS_SEQ_IDX=False, DETERMINISTIC_REDUCTION=deterministic,
            BLOCK_SIZE_K=max(self.triton.next_power_of_2(headdim), 16),
        )
        return self._sum_splits(dC), self.finalize_tile_workspace(ddA_prev, deterministic)

    def chunk_scan_bwd_dcb(self, x: Tensor, dt: Tensor, dA_cumsum: Tensor, dout: Tensor,
                           ngroups: int) -> Tensor:
        """mamba-ssm's `_chunk_scan_bwd_dcb` without CB: dCB in fp32."""
        batch, seqlen, nheads, headdim = x.shape
        nchunks, chunk_size = dt.shape[2], dt.shape[3]
        per_program, nsplits = self._split(batch, nchunks, nheads, ngroups, x.device)
        dcb = torch.empty(batch, nchunks, nsplits, ngroups, chunk_size, chunk_size,
                          device=x.device, dtype=torch.float32)
        self._launch(
            self.dcb_kernel, x.device, chunk_size, chunk_size, (batch * nchunks, nsplits * ngroups),
            x_ptr=x, dout_ptr=dout, cb_ptr=None, dt_ptr=dt, dA_cumsum_ptr=dA_cumsum,
            seq_idx_ptr=None, dcb_ptr=dcb, ddA_cumsum_ptr=None,
            chunk_size=chunk_size, hdim=headdim, batch=batch, seqlen=seqlen, nheads=nheads,
            nheads_per_program=per_program, ngroups=ngroups,
            **_strides("stride_x_", x, batch=0, seqlen=1, head=2, hdim=3),
            **_strides("stride_dout_", dout, batch=0, seqlen=1, head=2, hdim=3),
            **_strides("stride_cb_", None, batch=0, chunk=1, head=2, csize_m=3, csize_n=4),
            **_strides("stride_dt_", dt, batch=0, chunk=2, head=1, csize=3),
            **_strides("stride_dA_cs_", dA_cumsum, batch=0, chunk=2, head=1, csize=3),
            stride_seq_idx_batch=0, stride_seq_idx_seqlen=0,
            **_strides("stride_dcb_", dcb, batch=0, chunk=1, split=2, group=3, csize_m=4, csize_n=5),
            **_strides("stride_ddA_cs_", None, batch=0, chunk=1, head=2, csize_m=3, csize_n=4),
            HAS_DDA_CS=False, HAS_SEQ_IDX=False,
            BLOCK_SIZE_K=max(self.triton.next_power_of_2(headdim), 16),
        )
        return self._sum_splits(dcb)


_DB_ARGS = (
    "x_ptr", "dstates_ptr", "b_ptr", "dt_ptr", "dA_cumsum_ptr", "seq_idx_ptr", "db_ptr",
    "ddA_cumsum_ptr", "chunk_size", "dstate", "hdim", "batch", "seqlen", "nheads",
    "nheads_per_program", "ngroups", "stride_x_batch", "stride_x_seqlen", "stride_x_head",
    "stride_x_hdim", "stride_dstates_batch", "stride_dstates_chunk", "stride_states_head",
    "stride_states_hdim", "stride_states_dstate", "stride_b_batch", "stride_b_seqlen",
    "stride_b_head", "stride_b_dstate", "stride_dt_batch", "stride_dt_chunk", "stride_dt_head",
    "stride_dt_csize", "stride_dA_cs_batch", "stride_dA_cs_chunk", "stride_dA_cs_head",
    "stride_dA_cs_csize", "stride_seq_idx_batch", "stride_seq_idx_seqlen", "stride_db_batch",
    "stride_db_seqlen", "stride_db_split", "stride_db_group", "stride_db_dstate",
    "stride_ddA_cs_batch", "stride_ddA_cs_chunk", "stride_ddA_cs_head", "stride_ddA_cs_csize",
    "stride_ddA_tile", "HAS_DDA_CS", "HAS_SEQ_IDX", "DETERMINISTIC_REDUCTION", "BLOCK_SIZE_K",
)
_DC_ARGS = (
    "dout_ptr", "prev_states_ptr", "C_ptr", "dA_cumsum_ptr", "seq_idx_ptr", "dc_ptr",
    "ddA_cumsum_ptr", "chunk_size", "dstate", "hdim", "batch", "seqlen", "nheads",
    "nheads_per_program", "ngroups", "stride_dout_batch", "stride_dout_seqlen",
    "stride_dout_head", "stride_dout_hdim", "stride_prev_states_batch", "stride_prev_states_chunk",
    "stride_prev_states_head", "stride_prev_states_hdim", "stride_prev_states_dstate",
    "stride_C_batch", "stride_C_seqlen", "stride_C_head", "stride_C_dstate", "stride_dA_cs_batch",
    "stride_dA_cs_chunk", "stride_dA_cs_head", "stride_dA_cs_csize", "stride_seq_idx_batch",
    "stride_seq_idx_seqlen", "stride_dc_batch", "stride_dc_seqlen", "stride_dc_split",
    "stride_dc_group", "stride_dc_dstate", "stride_ddA_cs_batch", "stride_ddA_cs_chunk",
    "stride_ddA_cs_head", "stride_ddA_cs_csize", "stride_ddA_tile", "HAS_DDA_CS", "HAS_SEQ_IDX",
    "DETERMINISTIC_REDUCTION", "BLOCK_SIZE_K",
)
_DCB_ARGS = (
    "x_ptr", "dout_ptr", "cb_ptr", "dt_ptr", "dA_cumsum_ptr", "seq_idx_ptr", "dcb_ptr",
    "ddA_cumsum_ptr", "chunk_size", "hdim", "batch", "seqlen", "nheads", "nheads_per_program",
    "ngroups", "stride_x_batch", "stride_x_seqlen", "stride_x_head", "stride_x_hdim",
    "stride_dout_batch", "stride_dout_seqlen", "stride_dout_head", "stride_dout_hdim",
    "stride_cb_batch", "stride_cb_chunk", "stride_cb_head", "stride_cb_csize_m",
    "stride_cb_csize_n", "stride_dt_batch", "stride_dt_chunk", "stride_dt_head", "stride_dt_csize",
    "stride_dA_cs_batch", "stride_dA_cs_chunk", "stride_dA_cs_head", "stride_dA_cs_csize",
    "stride_seq_idx_batch", "stride_seq_idx_seqlen", "stride_dcb_batch", "stride_dcb_chunk",
    "stride_dcb_split", "stride_dcb_group", "stride_dcb_csize_m", "stride_dcb_csize_n",
    "stride_ddA_cs_batch", "stride_ddA_cs_chunk", "stride_ddA_cs_head", "stride_ddA_cs_csize_m",
    "stride_ddA_cs_csize_n", "HAS_DDA_CS", "HAS_SEQ_IDX", "BLOCK_SIZE_K",
)


_KERNELS: _Kernels | None = None
"""The kernels the ops below run: set by `scan_function` once mamba-ssm passed its check."""


MISSING_MAMBA_SSM = (
    "ssd_backend='mamba_ssm' needs the mamba-ssm package (its Triton SSD kernels; the CUDA "
    "extension is not required): install the GPU extra, `pip install 'titan_mimo[gpu]'`, or put "
    "mamba-ssm's source folder on PYTHONPATH; or use ssd_backend='torch'"
)
SSD_COMBINED_MODULE = "mamba_ssm.ops.triton.ssd_combined"


def import_scan(keep_states: bool = False) -> Callable[..., Tensor]:
    """`scan_function` of the installed mamba-ssm's `ssd_combined`; ImportError naming the `gpu`
    extra where mamba-ssm is missing.

    mamba-ssm 2.3.2's package `__init__` imports its CUDA extension (`selective_scan_cuda`, used
    by Mamba-1 only) unconditionally, so a source install without that build cannot `import
    mamba_ssm` although the SSD path is pure Triton. So the normal import comes first and, if
    only the package `__init__` fails, a bare package object for `mamba_ssm` (its `__path__`
    only) is registered in `sys.modules`, so the Triton submodules import without running it."""
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
        module = importlib.import_module(SSD_COMBINED_MODULE)
    except ImportError as e:
        raise ImportError(f"{MISSING_MAMBA_SSM} (importing {SSD_COMBINED_MODULE} failed: {e})") from e
    return scan_function(module, keep_states)


def _kernels() -> _Kernels:
    """`_KERNELS`, set up on first use when an op runs before any mixer was built in this process
    (e.g. a graph loaded from a compile cache)."""
    if _KERNELS is None:
        import_scan()
        if _KERNELS is None:
            raise RuntimeError(
                "titan_mimo::ssd_forward / ssd_backward: the installed mamba-ssm's kernels do not "
                "match what these ops were written against (see the warning above); build the "
                "Mamba2 mixers with ssd_backend='mamba_ssm' to use mamba-ssm's own function instead"
            )
    return _KERNELS


# The scan as two torch.library custom ops with an autograd formula, so a per-block
# torch.compile traces the whole Mamba2 mixer as one graph (the Triton launches stay opaque
# calls): no graph break around the scan, and the partitioner sees the conv + SiLU that makes
# x, B and C and may recompute it in the backward instead of keeping its outputs.
# Every output is contiguous, in the real ops and their fake (meta) versions alike.


def _kernel_layouts(x: Tensor, B: Tensor, C: Tensor, D: Tensor | None):
    """x, B, C, D in the layouts mamba-ssm's forward gives its kernels (copies only when needed);
    both ops apply it, since the backward gets the op's inputs as they came."""
    B = B if B.stride(-1) == 1 else B.contiguous()
    C = C if C.stride(-1) == 1 else C.contiguous()
    if x.stride(-1) != 1 and x.stride(1) != 1:
        x = x.contiguous()
    if D is not None and D.stride(-1) != 1:
        D = D.contiguous()
    return x, B, C, D


@torch.library.custom_op("titan_mimo::ssd_forward", mutates_args=())
def _ssd_forward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                 chunk_size: int, keep_states: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, chunked dt, dA's cumsum, the chunk states or an empty tensor)."""
    x, B, C, D = _kernel_layouts(x, B, C, D)
    out, _, dt_chunked, dA_cumsum, states, _ = _kernels().combined_fwd(x, dt, A, B, C, chunk_size,
                                                                     D=D)
    if not keep_states:
        states = states.new_empty(0)
    return out.contiguous(), dt_chunked, dA_cumsum, states


@_ssd_forward.register_fake
def _(x, dt, A, B, C, D, chunk_size, keep_states):
    batch, seqlen, nheads, headdim = x.shape
    nchunks = -(-seqlen // chunk_size)
    chunked = dt.new_empty(batch, nheads, nchunks, chunk_size, dtype=torch.float32)
    states = (C.new_empty(batch, nchunks, nheads, headdim, B.shape[-1]) if keep_states
              else C.new_empty(0))
    return torch.empty_like(x, memory_format=torch.contiguous_format), chunked, \
        torch.empty_like(chunked), states


@torch.library.custom_op("titan_mimo::ssd_backward", mutates_args=())
def _ssd_backward(dout: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Tensor | None, dt_chunked: Tensor, dA_cumsum: Tensor, states: Tensor,
                  chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, ddt, dA, dB, dC, dD or an empty tensor); `states` empty: recomputed here."""
    k = _kernels()
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    x, B, C, D = _kernel_layouts(x, B, C, D)
    batch, _, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    nchunks = dA_cumsum.shape[2]
    flat = (batch, nchunks, nheads, headdim * dstate)
    if states.numel() == 0:  # recomputed in fp32, as mamba-ssm's backward does
        states = k.chunk_state_fwd(B, x, dt_chunked, dA_cumsum, states_in_fp32=True)
        states, _ = k.state_passing_fwd(states.view(flat), dA_cumsum[:, :, :, -1],
                                        chunk_size=chunk_size)
    CB = k.bmm_fwd(C, B, chunk_size, output_dtype=torch.float32)
    dstates = k.bwd_dstates(C, dA_cumsum, dout, dtype=torch.float32)
    # states[:, c] is the state entering chunk c (zeros for c = 0); dstates the same for its
    # gradient. Both leave in x's dtype (a kept state already is) for the kernels below.
    dstates, ddA_chunk_cumsum, _, states = k.state_passing_bwd(
        states.reshape(flat), dA_cumsum[:, :, :, -1], dstates.view(flat),
        dstates_dtype=x.dtype, states_dtype=x.dtype, chunk_size=chunk_size)
    full = (batch, nchunks, nheads, headdim, dstate)
    states, dstates = states.view(full), dstates.view(full)
    dx, ddt, dD = k.bwd_dx(x, dt_chunked, dA_cumsum, B, CB, dout, dstates, D=D)
    dB, ddA_next = k.chunk_state_bwd_db(x, dt_chunked, dA_cumsum, dstates, B, ngroups)
    dC, ddA_cumsum_prev = k.chunk_scan_bwd_dC(states.to(x.dtype), dA_cumsum, dout, C, ngroups)
    dCB = k.chunk_scan_bwd_dcb(x, dt_chunked, dA_cumsum, dout, ngroups)
    dB_out, dC_out = torch.empty_like(B), torch.empty_like(C)
    k.bmm_bwd(C, dCB, residual=dB, out=dB_out)
    k.bmm_bwd(B, dCB.transpose(-1, -2), residual=dC, out=dC_out)
    ddA_cumsum_prev[..., -1] += ddA_chunk_cumsum
    ddA = k.bwd_ddAcs_stable(x, dt_chunked, dA_cumsum, dout, CB)
    ddA += ddA_next + ddA_cumsum_prev.flip([-1]).cumsum(dim=-1).flip([-1])
    ddt_out, dA, _ = k.cumsum_bwd(ddA, ddt, dt.contiguous(), A)
    return (dx.contiguous(), ddt_out.contiguous(), dA, dB_out.contiguous(), dC_out.contiguous(),
            dD if dD is not None else A.new_empty(0))


@_ssd_backward.register_fake
def _(dout, x, dt, A, B, C, D, dt_chunked, dA_cumsum, states, chunk_size):
    like = lambda t, **kw: torch.empty_like(t, memory_format=torch.contiguous_format, **kw)
    return (like(x), like(dt), like(A, dtype=torch.float32), like(B), like(C),
            like(D) if D is not None else A.new_empty(0))


def _ssd_setup_context(ctx, inputs, output) -> None:
    x, dt, A, B, C, D, chunk_size, _ = inputs
    _, dt_chunked, dA_cumsum, states = output
    ctx.save_for_backward(x, dt, A, B, C, D, dt_chunked, dA_cumsum, states)
    ctx.chunk_size = chunk_size


def _ssd_grad(ctx, dout: Tensor, *_internal):
    # Only y leaves `ssd_scan`: the other outputs' gradients are None.
    x, dt, A, B, C, D, dt_chunked, dA_cumsum, states = ctx.saved_tensors
    dx, ddt, dA, dB, dC, dD = _ssd_backward(dout, x, dt, A, B, C, D, dt_chunked, dA_cumsum,
                                            states, ctx.chunk_size)
    return dx, ddt, dA, dB, dC, (dD if D is not None else None), None, None


_ssd_forward.register_autograd(_ssd_grad, setup_context=_ssd_setup_context)


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
             D: Tensor | None = None, *, keep_states: bool = False) -> Tensor:
    """y = SSD(x, dt, A, B, C) + D·x through the ops above (`scan_function` must have passed)."""
    return _ssd_forward(x, dt, A, B, C, D, chunk_size, keep_states)[0]


def scan_function(module: Any, keep_states: bool = False) -> Callable[..., Tensor]:
    """The scan `(x, dt, A, B, C, chunk_size, D=None) -> y` for the imported `ssd_combined`
    `module`: ours (`keep_states`: see the module docstring) when the installed mamba-ssm matches
    what it was written against, else the module's own `mamba_chunk_scan_combined` (logged as a
    warning; it is an autograd.Function that torch.compile cannot trace: callers keep it out of
    compiled graphs)."""
    global _KERNELS
    try:
        kernels = _Kernels()
        problem = kernels.check()
    except (ImportError, AttributeError) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        logger.warning("ssd_backend='mamba_ssm': using mamba-ssm's own backward, which recomputes "
                       "the chunk states (%s)", problem)
        return module.mamba_chunk_scan_combined
    _KERNELS = kernels
    return functools.partial(ssd_scan, keep_states=keep_states)


def is_custom_op_scan(fn: Callable[..., Tensor]) -> bool:
    """Whether `fn` (from `scan_function`) is ours, traceable by torch.compile."""
    return isinstance(fn, functools.partial) and fn.func is ssd_scan
