"""config.json of the supported transformers families <-> our model args.

Reading: a field we cannot express exactly is an error naming it; a field that changes nothing
in the forward pass (dropout, cache and generation settings, initialisation) is ignored. Missing
fields take transformers' defaults (5.x), and the legacy names of released checkpoints are read
too (`hybrid_override_pattern`, `mamba_n_groups`, `llm_config`, `img_context_token_id`, ...).
Writing: the source folder's config.json (when there is one) with every field we derive from the
args set again, so fields we do not model (token ids, generation settings) are carried through.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.vision.args import ViTArgs

__all__ = ["SUPPORTED_MODEL_TYPES", "lm_args", "lm_config", "omni_config", "omni_parts", "omni_vision_args",
           "radio_args", "radio_config", "read_config"]

SUPPORTED_MODEL_TYPES = ("nemotron_h", "radio", "nemotron_h_omni")

BLOCK_TYPES = {"linear_attention": "M", "full_attention": "*", "mlp": "-", "moe": "E"}
"""Nemotron-H's layers_block_type names -> our layer_pattern characters."""

NEMOTRON_H_DEFAULTS = {
    "vocab_size": 131072, "hidden_size": 4096, "tie_word_embeddings": False, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 21504, "mlp_hidden_act": "relu2",
    "mlp_bias": False, "ssm_state_size": 128, "mamba_num_heads": 128, "mamba_head_dim": 64,
    "mamba_hidden_act": "silu", "n_groups": 8, "conv_kernel": 4, "time_step_limit": [0.0, math.inf],
    "use_conv_bias": True, "chunk_size": 128, "n_routed_experts": 8, "moe_intermediate_size": 7688,
    "moe_shared_expert_intermediate_size": 7688, "moe_latent_size": None, "num_experts_per_tok": 2,
    "routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1, "norm_topk_prob": True,
    "num_nextn_predict_layers": 0, "use_bias": False, "layer_norm_epsilon": 1e-5, "sliding_window": None,
}
"""transformers' NemotronHConfig defaults of the fields we read."""

NEMOTRON_H_LEGACY = {"mamba_n_groups": "n_groups", "mamba_d_conv": "conv_kernel", "mamba_dt_limit": "time_step_limit",
                     "mamba_conv_bias": "use_conv_bias", "mamba_chunk_size": "chunk_size",
                     "num_local_experts": "n_routed_experts", "layer_types": "layers_block_type"}

RADIO_DEFAULTS = {
    "hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "mlp_ratio": 4.0, "hidden_act": "gelu",
    "layer_norm_eps": 1e-6, "use_swiglu_ffn": False, "qkv_bias": True, "layerscale_value": 1.0, "num_channels": 3,
    "patch_size": 16, "max_img_size": 2048, "num_cls_tokens": 3, "num_registers": 7,
    "norm_mean": [0.48145466, 0.4578275, 0.40821073], "norm_std": [0.26862954, 0.26130258, 0.27577711],
}
"""transformers' RadioConfig defaults of the fields we read (norm_mean/std: OpenAI CLIP's)."""

OMNI_DEFAULTS = {"downsample_ratio": 0.5, "projector_hidden_size": 4096, "vision_hidden_size": 1280,
                 "image_token_id": None}
OMNI_LEGACY = {"llm_config": "text_config", "vit_hidden_size": "vision_hidden_size",
               "img_context_token_id": "image_token_id", "sound_config": "audio_config"}
OMNI_PROJECTOR_EPS = 1e-5
"""transformers builds the Omni projector's RMSNorm with its default eps, not a config field."""

ARCHITECTURES = {"nemotron_h": "NemotronHForCausalLM", "radio": "RadioModel",
                 "nemotron_h_omni": "NemotronH_Omni_Reasoning_V3"}


def read_config(path: Path) -> dict:
    """`path/config.json` with its model_type checked (ValueError otherwise)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ValueError(f"{file} does not exist: not a Hugging Face model folder")
    try:
        config = json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None
    kind = config.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{file}: model_type {kind!r} is not supported; supported: {list(SUPPORTED_MODEL_TYPES)}")
    return config


def _resolved(config: dict, defaults: dict, legacy: dict) -> dict:
    out = dict(config)
    for old, new in legacy.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return {**defaults, **out}


def _float(value) -> float:
    """A float as transformers writes it to JSON (inf as {"__float__": "Infinity"})."""
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    return float(value)


def _require(where: str, config: dict, field: str, allowed) -> None:
    if config[field] not in allowed:
        raise ValueError(f"{where}: {field} = {config[field]!r} cannot be expressed (titan_mimo supports "
                         f"{' or '.join(repr(a) for a in allowed)})")


def layer_pattern(config: dict, where: str) -> str:
    if "layers_block_type" in config and config["layers_block_type"] is not None:
        kinds = config["layers_block_type"]
        unknown = sorted(set(kinds) - set(BLOCK_TYPES))
        if unknown:
            raise ValueError(f"{where}: layers_block_type has unknown kinds {unknown}")
        return "".join(BLOCK_TYPES[k] for k in kinds)
    if "hybrid_override_pattern" in config:
        return config["hybrid_override_pattern"]
    raise ValueError(f"{where}: neither layers_block_type nor hybrid_override_pattern is set")


def lm_args(config: dict, where: str) -> HybridLMArgs:
    """A nemotron_h config (a folder's, or an Omni folder's text_config) -> HybridLMArgs."""
    c = _resolved(config, NEMOTRON_H_DEFAULTS, NEMOTRON_H_LEGACY)
    pattern = layer_pattern(c, where)
    for field, allowed in (("tie_word_embeddings", (False,)), ("use_bias", (False,)), ("mlp_bias", (False,)),
                           ("use_conv_bias", (True,)), ("mlp_hidden_act", ("relu2",)),
                           ("mamba_hidden_act", ("silu",)), ("sliding_window", (None,))):
        _require(where, c, field, allowed)
    limit = tuple(_float(v) for v in c["time_step_limit"])
    if limit != (0.0, math.inf):
        raise ValueError(f"{where}: time_step_limit = {list(limit)} cannot be expressed (titan_mimo supports [0, inf])")
    return HybridLMArgs(
        vocab_size=c["vocab_size"], dim=c["hidden_size"], layer_pattern=pattern,
        n_heads=c["num_attention_heads"], n_kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        mlp_hidden=c["intermediate_size"], mamba_n_heads=c["mamba_num_heads"], mamba_head_dim=c["mamba_head_dim"],
        mamba_d_state=c["ssm_state_size"], mamba_n_groups=c["n_groups"], mamba_d_conv=c["conv_kernel"],
        mamba_chunk_size=c["chunk_size"], norm_eps=c["layer_norm_epsilon"], position_embedding="none",
        n_routed_experts=c["n_routed_experts"], n_experts_per_tok=c["num_experts_per_tok"],
        moe_intermediate_size=c["moe_intermediate_size"],
        moe_shared_expert_intermediate_size=c["moe_shared_expert_intermediate_size"],
        n_group=c["n_group"], topk_group=c["topk_group"], norm_topk_prob=c["norm_topk_prob"],
        routed_scaling_factor=float(c["routed_scaling_factor"]), moe_latent_size=c["moe_latent_size"],
    )


def radio_args(config: dict, where: str, *, conditioner: bool, layer_scale: bool, final_norm: bool) -> ViTArgs:
    """A radio config -> ViTArgs of the encoder (the projector fields keep their defaults).

    `conditioner`: RADIO normalises pixels itself (a radio folder); the Omni model's processor
    does it instead. `layer_scale`: the folder holds LayerScale tensors. `final_norm`: the Omni
    model's vision_final_layernorm (C-RADIO itself has none)."""
    c = _resolved(config, RADIO_DEFAULTS, {})
    for field, allowed in (("use_swiglu_ffn", (False,)), ("qkv_bias", (True,)),
                           ("hidden_act", ("gelu", "gelu_pytorch_tanh"))):
        _require(where, c, field, allowed)
    if c["max_img_size"] % c["patch_size"]:
        raise ValueError(f"{where}: max_img_size = {c['max_img_size']} is not a multiple of "
                         f"patch_size = {c['patch_size']}")
    if not layer_scale and float(c["layerscale_value"]) != 1.0:
        raise ValueError(f"{where}: layerscale_value = {c['layerscale_value']} with no layer_scale tensors in the "
                         "folder cannot be expressed (titan_mimo loads LayerScale from its tensors)")
    return ViTArgs(
        patch_size=c["patch_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
        n_heads=c["num_attention_heads"], mlp_dim=int(c["hidden_size"] * c["mlp_ratio"]),
        in_channels=c["num_channels"], base_grid=c["max_img_size"] // c["patch_size"],
        n_register_tokens=c["num_cls_tokens"] + c["num_registers"], use_cls_token=False,
        norm_eps=c["layer_norm_eps"], patch_bias=False, pos_embed_rule="radio",
        norm_mean=tuple(c["norm_mean"]) if conditioner else None,
        norm_std=tuple(c["norm_std"]) if conditioner else None,
        mlp_act="gelu" if c["hidden_act"] == "gelu" else "gelu_tanh", layer_scale=layer_scale,
        final_norm=final_norm,
    )


def omni_parts(config: dict, where: str) -> tuple[dict, dict, dict]:
    """An Omni config -> (its resolved top-level fields, vision_config, text_config), checked."""
    c = _resolved(config, OMNI_DEFAULTS, OMNI_LEGACY)
    for sub in ("vision_config", "text_config"):
        if not isinstance(c.get(sub), dict):
            raise ValueError(f"{where}: {sub} is missing")
    if _float(c["downsample_ratio"]) != 0.5:
        raise ValueError(f"{where}: downsample_ratio = {c['downsample_ratio']} cannot be expressed (transformers' "
                         "Omni image path supports 0.5 only, and so does titan_mimo)")
    if c["image_token_id"] is None:
        raise ValueError(f"{where}: image_token_id is not set")
    vision_hidden = c["vision_config"].get("hidden_size", RADIO_DEFAULTS["hidden_size"])
    if c["vision_hidden_size"] != vision_hidden:
        raise ValueError(f"{where}: vision_hidden_size = {c['vision_hidden_size']} but vision_config.hidden_size = "
                         f"{vision_hidden}")
    return c, c["vision_config"], c["text_config"]


def omni_vision_args(config: dict, where: str, *, layer_scale: bool) -> ViTArgs:
    """The Omni model's vision side (RADIO + pixel shuffle + projector) -> ViTArgs."""
    c, vision, text = omni_parts(config, where)
    mtp = _resolved(text, NEMOTRON_H_DEFAULTS, NEMOTRON_H_LEGACY)["num_nextn_predict_layers"] > 0
    args = radio_args(vision, f"{where} vision_config", conditioner=False, layer_scale=layer_scale, final_norm=mtp)
    return dataclasses.replace(
        args, pixel_shuffle=2, projector_hidden=c["projector_hidden_size"],
        out_dim=_resolved(text, NEMOTRON_H_DEFAULTS, NEMOTRON_H_LEGACY)["hidden_size"], projector_norm="rmsnorm",
        projector_norm_eps=OMNI_PROJECTOR_EPS, projector_act="relu2", projector_bias=False)


def _drop_aliases(config: dict, legacy: dict) -> dict:
    return {k: v for k, v in config.items() if k not in legacy and k != "hybrid_override_pattern"}


def lm_config(args: HybridLMArgs, base: dict | None = None) -> dict:
    """HybridLMArgs -> a nemotron_h config (over `base`, the source folder's, when given)."""
    if args.position_embedding != "none":
        raise ValueError(f"position_embedding = {args.position_embedding!r}: Nemotron-H attention has no position "
                         "embedding; only a model with position_embedding = 'none' exports as nemotron_h")
    inverse = {v: k for k, v in BLOCK_TYPES.items()}
    c = _drop_aliases(copy.deepcopy(base or {}), NEMOTRON_H_LEGACY)
    c.update(model_type="nemotron_h", vocab_size=args.vocab_size, hidden_size=args.dim,
             layers_block_type=[inverse[k] for k in args.layer_pattern], num_attention_heads=args.n_heads,
             num_key_value_heads=args.n_kv_heads, head_dim=args.head_dim, intermediate_size=args.mlp_hidden,
             mamba_num_heads=args.mamba_n_heads, mamba_head_dim=args.mamba_head_dim,
             ssm_state_size=args.mamba_d_state, n_groups=args.mamba_n_groups, conv_kernel=args.mamba_d_conv,
             chunk_size=args.mamba_chunk_size, layer_norm_epsilon=args.norm_eps, tie_word_embeddings=False,
             use_bias=False, mlp_bias=False, use_conv_bias=True, mlp_hidden_act="relu2", mamba_hidden_act="silu")
    if "E" in args.layer_pattern:
        c.update(n_routed_experts=args.n_routed_experts, num_experts_per_tok=args.n_experts_per_tok,
                 moe_intermediate_size=args.moe_intermediate_size,
                 moe_shared_expert_intermediate_size=args.moe_shared_expert_intermediate_size,
                 n_group=args.n_group, topk_group=args.topk_group, norm_topk_prob=args.norm_topk_prob,
                 routed_scaling_factor=args.routed_scaling_factor, moe_latent_size=args.moe_latent_size)
    c.setdefault("architectures", [ARCHITECTURES["nemotron_h"]])
    return c


def _check_radio_encoder(args: ViTArgs) -> None:
    expected = {"patch_bias": False, "pos_embed_rule": "radio", "use_cls_token": False}
    bad = {k: getattr(args, k) for k, v in expected.items() if getattr(args, k) != v}
    if bad:
        raise ValueError(f"the encoder is not RADIO-shaped ({bad}; RADIO needs {expected})")


def radio_config(args: ViTArgs, n_cls_tokens: int, base: dict | None = None) -> dict:
    """ViTArgs -> a radio config. `n_cls_tokens`: how many of our prefix tokens are RADIO's class
    tokens (the rest are its registers)."""
    _check_radio_encoder(args)
    c = copy.deepcopy(base or {})
    c.update(model_type="radio", hidden_size=args.dim, num_hidden_layers=args.n_layers,
             num_attention_heads=args.n_heads, mlp_ratio=args.mlp_dim / args.dim,
             hidden_act="gelu" if args.mlp_act == "gelu" else "gelu_pytorch_tanh", layer_norm_eps=args.norm_eps,
             num_channels=args.in_channels, patch_size=args.patch_size,
             max_img_size=args.base_grid * args.patch_size, num_cls_tokens=n_cls_tokens,
             num_registers=args.n_register_tokens - n_cls_tokens, qkv_bias=True, use_swiglu_ffn=False,
             patch_dim=args.in_channels * args.patch_size ** 2)
    if args.norm_mean is not None:
        c.update(norm_mean=list(args.norm_mean), norm_std=list(args.norm_std))
    if int(args.dim * c["mlp_ratio"]) != args.mlp_dim:
        raise ValueError(f"mlp_dim = {args.mlp_dim} is not int(dim * mlp_ratio) for any float mlp_ratio")
    if base is None:
        c["architectures"] = [ARCHITECTURES["radio"]]
    return c


def omni_config(vit: ViTArgs, lm: HybridLMArgs, image_token_id: int, n_cls_tokens: int,
                base: dict | None = None) -> dict:
    """Our vision module + LM -> a nemotron_h_omni config (over the source folder's, when given)."""
    expected = {"pixel_shuffle": 2, "projector_norm": "rmsnorm", "projector_act": "relu2", "projector_bias": False,
                "norm_mean": None}
    bad = {k: getattr(vit, k) for k, v in expected.items() if getattr(vit, k) != v}
    eps = vit.norm_eps if vit.projector_norm_eps is None else vit.projector_norm_eps
    if bad or eps != OMNI_PROJECTOR_EPS:
        raise ValueError(f"the vision module's projector is not the Omni model's ({bad}, projector eps {eps}; "
                         f"it needs {expected} and eps {OMNI_PROJECTOR_EPS})")
    c = _drop_aliases(copy.deepcopy(base or {}), OMNI_LEGACY)
    text = lm_config(lm, (base or {}).get("text_config") or (base or {}).get("llm_config"))
    mtp = text.get("num_nextn_predict_layers", 0) > 0
    if vit.final_norm != mtp:
        raise ValueError(f"the vision encoder {'has' if vit.final_norm else 'has no'} final norm, but transformers "
                         f"builds vision_final_layernorm exactly when the LM has MTP layers ({mtp})")
    vision = radio_config(vit, n_cls_tokens, (base or {}).get("vision_config"))
    c.update(model_type="nemotron_h_omni", vision_config=vision, text_config=text, downsample_ratio=0.5,
             projector_hidden_size=vit.projector_hidden, vision_hidden_size=vit.dim, image_token_id=image_token_id)
    if lm.dim != vit.out_dim:
        raise ValueError(f"the projector's out_dim = {vit.out_dim} is not the LM's dim = {lm.dim}")
    if base is None:
        # transformers' Omni model always builds RADIO's video patch projection; without a source
        # folder there is none to carry, so transformers initialises it (video is not trained here).
        c["architectures"] = [ARCHITECTURES["nemotron_h_omni"]]
        vision["video_temporal_patch_size"] = c["video_temporal_patch_size"] = 2
    return c
