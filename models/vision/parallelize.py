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

FLOAT8_KEEP_BF16 = ("patch_embed", "projector")
"""FQN substrings that stay bf16 when the trainer converts linears to float8 (torchtitan's
`filter_fqns`): the patch embedding (the input layer, on raw pixels: K = 3 p^2, which need not
divide by 16) and the projector into the language model (its linears run on the merged tokens
only, 1/s^2 of the patches, and its output is what the language model reads). The blocks'
attention and MLP projections are candidates, subject to the size filter."""


def apply_tp(model: VisionModule, tp_mesh: DeviceMesh) -> None:
    for block in model.encoder.layers.values():
        parallelize_module(block, tp_mesh, {
            "attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(), "mlp.w1": ColwiseParallel(), "mlp.w2": RowwiseParallel(),
        })


def apply_fsdp(model: VisionModule, dp_mesh: DeviceMesh, param_dtype: torch.dtype,
               reshard_after_forward: bool = True) -> None:
    fsdp.apply_fsdp(model, model.encoder.layers.values(), dp_mesh, param_dtype, reshard_after_forward)
