"""Parallelism for the vision module (ViT + projector), applied from outside the model code:
tensor parallel on the transformer blocks (no sequence parallel: the patch sequence is short
next to the LM's, and replicated activations keep the projector simple), then FSDP2.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from .. import fsdp
from .model import VisionModule


def apply_tp(model: VisionModule, tp_mesh: DeviceMesh) -> None:
    for block in model.encoder.layers.values():
        parallelize_module(block, tp_mesh, {
            "attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(), "mlp.w1": ColwiseParallel(), "mlp.w2": RowwiseParallel(),
        })


def apply_fsdp(model: VisionModule, dp_mesh: DeviceMesh, param_dtype: torch.dtype,
               reshard_after_forward: bool = True) -> None:
    fsdp.apply_fsdp(model, model.encoder.layers.values(), dp_mesh, param_dtype, reshard_after_forward)
