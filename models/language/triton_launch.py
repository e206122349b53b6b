"""What the Mamba2 mixer's Triton ops (`conv_triton`, `gated_norm_triton`) share around a kernel
launch: the device check and the launch context, and the unit last-dim stride their kernels read."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

__all__ = ["check_device", "launch_on", "unit_last_stride"]


def check_device(t: Tensor, option: str) -> None:
    """Refuse a CPU tensor outside Triton's interpreter; `option` names the config choice."""
    if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{option}='triton' runs on CUDA tensors (on CPU only under Triton's interpreter, "
                         f"TRITON_INTERPRET=1: the tests), not on {t.device}; use {option}='torch'")


def launch_on(device: torch.device):
    """The context to launch a kernel in: `device` (a CPU tensor runs under the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def unit_last_stride(t: Tensor) -> Tensor:
    """t with unit last-dim stride (a slice of a wider last dim is fine: rows keep their stride)."""
    return t if t.stride(-1) == 1 else t.contiguous()
