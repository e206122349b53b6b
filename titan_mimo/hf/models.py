"""`from_pretrained` / `save_pretrained`: our models from and to transformers folders, called
like the transformers model of the folder.

Shape legend: B batch, S sequence, V vocab, N patches of all images, K = C·p·p pixels of one
patch (in (C, p, p) order), D encoder dim.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from titan_mimo.models.common import init_buffers
from titan_mimo.models.language.model import HybridLM
from titan_mimo.models.mimo import MimoModel
from titan_mimo.models.vision.model import ViT, VisionModule

from .files import Folder, write_folder
from .layout import Layout, check_tensors, describe
from .load import load_into
from .names import to_file_tensors

__all__ = ["NemotronH", "NemotronHOmni", "Radio", "file_tensors", "from_pretrained", "save_pretrained",
           "unpack_patches"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KEEP_FP32 = ("mixer.gate.weight", "mixer.gate.e_score_correction_bias")
"""File tensors kept in float32 whatever the export dtype: the MoE router, which transformers
keeps in float32 too (`_keep_in_fp32_modules_strict`)."""
MAX_SHARD_BYTES = 5 * 1024**3
"""Shard size of written folders (transformers' default max_shard_size, 5 GB)."""


def unpack_patches(pixel_values_NK: Tensor, image_grid_hw: Tensor, channels: int, patch: int) -> list[Tensor]:
    """transformers' packed patches (row-major per image, (C, p, p) per patch) -> images [C, H, W]."""
    images, start = [], 0
    for h, w in image_grid_hw.tolist():
        x = pixel_values_NK[start:start + h * w].reshape(h, w, channels, patch, patch)
        images.append(x.permute(2, 0, 3, 1, 4).reshape(channels, h * patch, w * patch))
        start += h * w
    if start != pixel_values_NK.shape[0]:
        raise ValueError(f"pixel_values has {pixel_values_NK.shape[0]} patches, image_grid_hw describes {start}")
    return images


class NemotronH(nn.Module):
    """A nemotron_h folder: `model(input_ids=...)` -> logits [B, S, V]."""

    def __init__(self, layout: Layout):
        super().__init__()
        self.layout = layout
        self.language = HybridLM(layout.lm)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.language(input_ids)


class Radio(nn.Module):
    """A radio folder: `model(pixel_values=..., image_grid_hw=...)` -> patch features [N, D] of
    packed images (transformers' `features`), or [B, h·w, D] for a dense [B, C, H, W] batch."""

    def __init__(self, layout: Layout):
        super().__init__()
        self.layout = layout
        self.vision = ViT(layout.vit)

    def forward(self, pixel_values: Tensor, image_grid_hw: Tensor | None = None) -> Tensor:
        if image_grid_hw is None:
            return self.vision(pixel_values)
        a = self.layout.vit
        images = unpack_patches(pixel_values, image_grid_hw, a.in_channels, a.patch_size)
        if len({tuple(im.shape) for im in images}) == 1:
            return self.vision(torch.stack(images)).flatten(0, 1)
        return torch.cat(self.vision.forward_packed(images))


class NemotronHOmni(nn.Module):
    """A nemotron_h_omni folder: `model(input_ids=..., pixel_values=..., image_grid_hw=...)` ->
    logits [B, S, V]; image features replace the image_token_id positions in order."""

    def __init__(self, layout: Layout):
        super().__init__()
        self.layout = layout
        self.mimo = MimoModel({"vision": VisionModule(layout.vit)}, HybridLM(layout.lm),
                              {"vision": layout.image_token_id})

    def forward(self, input_ids: Tensor, pixel_values: Tensor | None = None,
                image_grid_hw: Tensor | None = None) -> Tensor:
        images = []
        if pixel_values is not None:
            a = self.layout.vit
            images = unpack_patches(pixel_values, image_grid_hw, a.in_channels, a.patch_size)
        return self.mimo(input_ids, {"vision": images})


def _parts(model: nn.Module) -> dict[str, nn.Module]:
    """Our modules of a wrapper, by the namespace of `Layout.all_sources`."""
    if isinstance(model, NemotronH):
        return {"language": model.language}
    if isinstance(model, Radio):
        return {"vision": model.vision}
    if isinstance(model, NemotronHOmni):
        return {"language": model.mimo.language, "vision": model.mimo.encoders["vision"]}
    raise TypeError(f"save_pretrained takes a model from titan_mimo.hf.from_pretrained, not {type(model).__name__}")


WRAPPERS = {"nemotron_h": NemotronH, "radio": Radio, "nemotron_h_omni": NemotronHOmni}


def from_pretrained(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                    ) -> nn.Module:
    """A transformers folder (config.json + safetensors, single or sharded) -> our model of it,
    every tensor from the folder. ValueError naming the file and field or tensor for anything we
    cannot express."""
    layout = describe(Path(path))
    folder = Folder(Path(path))
    check_tensors(layout, folder, layout.all_sources())
    with torch.device("meta"):
        model = WRAPPERS[layout.kind](layout)
    model.to_empty(device=device)
    model.to(dtype)
    init_buffers(model)  # non-persistent ones (MoE token counts); the file fills the rest
    sources = layout.all_sources()
    for role, part in _parts(model).items():
        load_into(part, {k[len(role) + 1:]: v for k, v in sources.items() if k.startswith(f"{role}.")}, folder)
    return model.eval()


def file_tensors(layout: Layout, ours: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Full tensors of ours (namespaced like `Layout.all_sources`) -> every file tensor of the
    folder: mapped, derived (config-like buffers) and carried from the source folder."""
    out = {name: (t if name.endswith(KEEP_FP32) or not t.is_floating_point() else t.to(dtype))
           for name, t in to_file_tensors(ours, layout.all_sources()).items()}
    out.update(layout.derived_tensors())
    if layout.source is not None:
        source = Folder(layout.source)
        for name in sorted(source.names - set(out)):
            if layout.is_carried(name):
                out[name] = source.read(name)
    return out


def save_pretrained(model: nn.Module, path: str | Path, dtype: torch.dtype | str = torch.float32,
                    max_shard_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    """Write `model` (from `from_pretrained`) as a transformers folder: config.json and the
    safetensors, sharded above `max_shard_bytes`; branches we do not train are copied from the
    folder the model came from. Returns the files written."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    ours = {f"{role}.{fqn}": t.detach().cpu() for role, part in _parts(model).items()
            for fqn, t in part.state_dict().items()}
    layout = model.layout
    config = dict(layout.config, dtype=str(dtype).removeprefix("torch."))
    return write_folder(Path(path), file_tensors(layout, ours, dtype), config, max_shard_bytes)
