"""What a transformers folder holds, in our terms: its family, our model args for each part,
where each of our tensors lives in it (`names`), the file tensors we derive from args rather than
train, and the ones we carry from the source folder untouched (RADIO's video patch projection,
the Omni model's audio tower, MTP layers).

Prefixes of the on-disk names by family:

    nemotron_h       backbone.*, lm_head.weight
    radio            radio_model.model.* (encoder), radio_model.input_conditioner.*, radio_model.summary_idxs
    nemotron_h_omni  language_model.{backbone.*, lm_head.weight}, vision_model.radio_model.model.*,
                     vision_model.radio_model.summary_idxs, mlp1.{0,1,3}.weight (projector),
                     vision_projector.vision_final_layernorm.* (only with MTP layers), sound_* (audio)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.vision.args import ViTArgs

from . import configs
from .files import Folder, has_weights
from .names import Source, lm_sources, prefixed, projector_sources, vit_sources

__all__ = ["Layout", "check_tensors", "describe"]

RADIO_PREFIX = {"radio": "radio_model.", "nemotron_h_omni": "vision_model.radio_model."}
LM_PREFIX = {"nemotron_h": "", "nemotron_h_omni": "language_model."}
FINAL_NORM = "vision_projector.vision_final_layernorm."

CARRIED = {
    "nemotron_h": (r"(^|\.)mtp\.",),
    "radio": (r"patch_generator\.video_embedder\.",),
    "nemotron_h_omni": (r"(^|\.)mtp\.", r"patch_generator\.video_embedder\.", r"^sound_encoder\.",
                        r"^sound_projection\.", r"input_conditioner\."),
}
"""File tensors of branches we do not train, by family: copied from the source folder on export."""


@dataclass(kw_only=True)
class Layout:
    kind: str
    """config.json's model_type: "nemotron_h", "radio" or "nemotron_h_omni"."""
    config: dict
    """The config.json written on export (the source folder's, or one derived from the args)."""
    lm: HybridLMArgs | None = None
    vit: ViTArgs | None = None
    """The vision side: RADIO's encoder; for an Omni folder with the Omni projector."""
    image_token_id: int | None = None
    n_cls_tokens: int = 0
    """How many of RADIO's prefix tokens are class tokens (the rest are registers)."""
    source: Path | None = None
    """The folder whose untrained tensors are carried into an export."""

    def lm_sources(self) -> dict[str, Source]:
        """HybridLM fqn -> Source."""
        return lm_sources(self.lm, LM_PREFIX[self.kind])

    def vit_sources(self) -> dict[str, Source]:
        """ViT fqn -> Source (the Omni model's vision_final_layernorm is our encoder's final norm)."""
        out = vit_sources(self.vit, f"{RADIO_PREFIX[self.kind]}model.")
        if self.vit.final_norm:
            if self.kind != "nemotron_h_omni":
                raise ValueError("a RADIO encoder has no final norm; final_norm must be false")
            out.update({f"norm.{p}": Source((f"{FINAL_NORM}{p}",)) for p in ("weight", "bias")})
        return out

    def encoder_sources(self) -> dict[str, Source]:
        """VisionModule fqn -> Source: the encoder, and the projector in an Omni folder (a radio
        folder has none: the projector keeps its own initialisation)."""
        out = prefixed("encoder.", self.vit_sources())
        if self.kind == "nemotron_h_omni":
            out.update(prefixed("projector.", projector_sources(self.vit)))
        return out

    def derived_tensors(self) -> dict[str, torch.Tensor]:
        """File tensors that are config, not weights: RADIO's conditioner and summary indices."""
        if self.kind == "nemotron_h":
            return {}
        radio = RADIO_PREFIX[self.kind]
        vision = self.config if self.kind == "radio" else self.config["vision_config"]
        out = {f"{radio}summary_idxs": torch.tensor(vision.get("summary_idxs") or [0, 1], dtype=torch.int64)}
        if self.vit.norm_mean is not None:
            out[f"{radio}input_conditioner.norm_mean"] = torch.tensor(self.vit.norm_mean).view(-1, 1, 1)
            out[f"{radio}input_conditioner.norm_std"] = torch.tensor(self.vit.norm_std).view(-1, 1, 1)
        return out

    def is_carried(self, name: str) -> bool:
        return any(re.search(p, name) for p in CARRIED[self.kind])

    def all_sources(self) -> dict[str, Source]:
        """Every tensor of the folder's model in one namespace (language.*, vision.*)."""
        out = {}
        if self.lm is not None:
            out.update(prefixed("language.", self.lm_sources()))
        if self.vit is not None:
            out.update(prefixed("vision.", self.vit_sources() if self.kind == "radio" else self.encoder_sources()))
        return out


def describe(path: Path) -> Layout:
    """Read `path/config.json` (and the folder's tensor names) into a Layout; ValueError naming the
    file and field for anything we cannot express."""
    path = Path(path)
    config = configs.read_config(path)
    kind, where = config["model_type"], str(path / "config.json")
    if kind == "nemotron_h":
        return Layout(kind=kind, config=config, lm=configs.lm_args(config, where), source=path)
    # A folder with config.json alone (a shape to build, for benchmarks) has no tensor names:
    # LayerScale is then present only where the config's value is not the identity.
    folder = Folder(path) if has_weights(path) else None
    names = folder.names if folder is not None else set()
    vision_config = config if kind == "radio" else configs.omni_parts(config, where)[1]
    has_scale = (any(n.endswith("layer_scale1.lambda1") for n in names) if folder is not None
                 else float(vision_config.get("layerscale_value", 1.0)) != 1.0)
    if kind == "radio":
        vit = configs.radio_args(config, where, conditioner=True, layer_scale=has_scale, final_norm=False)
        # The conditioner's buffers are what transformers uses once loaded; they win over config.
        mean, std = (f"{RADIO_PREFIX[kind]}input_conditioner.norm_{k}" for k in ("mean", "std"))
        if mean in names and std in names:
            vit = dataclasses.replace(vit, norm_mean=tuple(folder.read(mean).flatten().tolist()),
                                      norm_std=tuple(folder.read(std).flatten().tolist()))
        return Layout(kind=kind, config=config, vit=vit, n_cls_tokens=config.get("num_cls_tokens", 3), source=path)
    top, vision, text = configs.omni_parts(config, where)
    return Layout(kind=kind, config=config, lm=configs.lm_args(text, f"{where} text_config"),
                  vit=configs.omni_vision_args(config, where, layer_scale=has_scale),
                  image_token_id=top["image_token_id"],
                  n_cls_tokens=vision.get("num_cls_tokens", configs.RADIO_DEFAULTS["num_cls_tokens"]), source=path)


def check_tensors(layout: Layout, folder: Folder, sources: dict[str, Source]) -> None:
    """Every tensor of the folder is ours, derived or carried: an extra one means a feature we
    would silently drop (ValueError naming it)."""
    used = {n for src in sources.values() for n in src.names} | set(layout.derived_tensors())
    extra = sorted(n for n in folder.names - used if not layout.is_carried(n))
    if extra:
        raise ValueError(f"{folder.path}: tensor '{extra[0]}' (and {len(extra) - 1} more) has no place in "
                         f"titan_mimo's {layout.kind} model")
    missing = sorted({n for src in sources.values() for n in src.names} - folder.names)
    if missing:
        raise ValueError(f"{folder.path}: tensor '{missing[0]}' is missing ({len(missing)} missing in all)")
