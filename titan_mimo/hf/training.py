"""The trainer's side of Hugging Face folders: `[modules.<name>] model = "hf:PATH"` and
`python -m titan_mimo.export CHECKPOINT OUT --format hf` (`export_folder`).

A module's args come from PATH/config.json (an Omni folder gives the vision module RADIO + its
projector and the language module the text model); `model_args` may still set what the folder
does not decide (kernels, backends), not a shape. Weights are loaded once a fresh run has built
and initialised its modules, in any layout: each rank reads the slices of its own shards. A
radio folder has no projector, so an encoder from one keeps the projector's own initialisation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.vision.args import ViTArgs

from . import configs
from .files import Folder, has_weights, write_folder
from .layout import Layout, check_tensors, describe
from .load import load_into
from .models import DTYPES, MAX_SHARD_BYTES, file_tensors

__all__ = ["HF_PREFIX", "export_folder", "folder_of", "load_weights", "module_args", "placeholder_id"]

HF_PREFIX = "hf:"
ROLES = {"nemotron_h": ("language",), "radio": ("encoder",), "nemotron_h_omni": ("language", "encoder")}
"""What a module loaded from each family may be."""
FREE_FIELDS = {"attention_backend", "ssd_backend", "ssd_keep_states", "mamba_kernels", "moe_backend",
               "moe_bias_update_rate", "moe_aux_loss_coeff", "rope_theta"}
"""Model args a config.json does not decide, which `model_args` may set."""
RADIO_ENCODER_FREE = {"pixel_shuffle", "projector_hidden", "projector_norm", "projector_norm_eps",
                      "projector_act", "projector_bias", "out_dim"}
"""Also free for an encoder from a radio folder: its projector is ours."""


def folder_of(model: str) -> Path | None:
    """PATH of a module's `model = "hf:PATH"`, else None."""
    return Path(model[len(HF_PREFIX):]) if model.startswith(HF_PREFIX) else None


def placeholder_id(path: Path) -> int | None:
    """The image token id of an Omni folder (None for other families)."""
    layout = describe(path)
    return layout.image_token_id


def _layout(path: Path, is_encoder: bool) -> Layout:
    layout = describe(path)
    role = "encoder" if is_encoder else "language"
    if role not in ROLES[layout.kind]:
        raise ValueError(f"{path}: a {layout.kind} folder cannot be the {role} module "
                         f"(it can be: {', '.join(ROLES[layout.kind])})")
    return layout


def module_args(path: Path, is_encoder: bool, overrides: dict) -> ViTArgs | HybridLMArgs:
    """The module's args from PATH/config.json with `overrides` of the fields it leaves free."""
    layout = _layout(path, is_encoder)
    args = layout.vit if is_encoder else layout.lm
    free = FREE_FIELDS | (RADIO_ENCODER_FREE if is_encoder and layout.kind == "radio" else set())
    fields = {f.name for f in dataclasses.fields(args)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    fixed = {k: v for k, v in overrides.items() if k not in free and getattr(args, k) != v}
    if fixed:
        raise ValueError(f"{sorted(fixed)} {'is' if len(fixed) == 1 else 'are'} set by {path / 'config.json'}; "
                         f"only {sorted(free & fields)} may be overridden")
    return dataclasses.replace(args, **overrides)


def load_weights(parts: list[nn.Module], path: Path, is_encoder: bool) -> int | None:
    """Fill this rank's parts of a module (an encoder, or language stages) from the folder;
    returns the number of tensors loaded, None for a folder with config.json alone (the module
    keeps its initialisation: real shapes for benchmarks without the weights)."""
    layout = _layout(path, is_encoder)
    if not has_weights(path):
        return None
    folder = Folder(path)
    check_tensors(layout, folder, layout.all_sources())
    sources = layout.encoder_sources() if is_encoder else layout.lm_sources()
    optional = ("projector.",) if is_encoder and layout.kind == "radio" else ()
    return sum(load_into(part, sources, folder, optional) for part in parts)


def _is_language(weights: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("tok_embeddings.", "layers.", "output.")) for k in weights)


def export_folder(models: dict[str, str], weights: dict[str, dict[str, torch.Tensor]], out: Path,
                  dtype: str = "float32", max_shard_bytes: int = MAX_SHARD_BYTES) -> tuple[str, list[Path]]:
    """Modules of a checkpoint ({name: model}, {name: full weights}) -> a transformers folder: a
    nemotron_h folder for a language model alone, a nemotron_h_omni folder for an encoder and a
    language model of the same Omni folder (its untrained branches copied from it). Returns the
    folder's family and files."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not one of {sorted(DTYPES)}")
    not_hf = {n: m for n, m in models.items() if folder_of(m) is None}
    if not_hf:
        raise ValueError(f"--format hf exports modules loaded from a Hugging Face folder (model = \"hf:PATH\", "
                         f"whose config.json the export keeps); {not_hf} are not")
    language = [n for n, w in weights.items() if _is_language(w)]
    encoders = [n for n in weights if n not in language]
    if len(language) != 1 or len(encoders) > 1:
        raise ValueError(f"--format hf needs one language module and at most one encoder; the checkpoint has "
                         f"language {language} and encoders {encoders}")
    lm_path = folder_of(models[language[0]])
    source = describe(lm_path)
    ours = {f"language.{k}": v for k, v in weights[language[0]].items()}
    if not encoders:
        if source.kind == "nemotron_h":
            layout = source
        else:  # the text model of an Omni folder, on its own
            text = configs.omni_parts(source.config, str(lm_path))[2]
            layout = Layout(kind="nemotron_h", config=configs.lm_config(source.lm, text), lm=source.lm)
    else:
        enc_path = folder_of(models[encoders[0]])
        if source.kind != "nemotron_h_omni" or enc_path.resolve() != lm_path.resolve():
            raise ValueError(f"--format hf writes an Omni folder from an encoder and a language model of one "
                             f"nemotron_h_omni folder; they come from {enc_path} and {lm_path}")
        layout = source
        ours.update({f"vision.{k}": v for k, v in weights[encoders[0]].items()})
    wanted = layout.all_sources()
    ours = {k: v for k, v in ours.items() if k in wanted}  # a checkpoint may hold more than weights
    config = dict(layout.config, dtype=dtype)
    return layout.kind, write_folder(out, file_tensors(layout, ours, DTYPES[dtype]), config, max_shard_bytes)
