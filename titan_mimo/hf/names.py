"""Where each of our tensors lives in a transformers folder (the on-disk names, which are the
released checkpoints' and what transformers' save_pretrained writes).

A mapping is {our fqn: Source}. Our layout may differ from the file's in three ways, each a
Source field: a slice of rows of one fused file tensor (Mamba2's in_proj and conv1d, RADIO's
qkv), a stack of per-expert file tensors (MoE experts), or a reshape (RADIO's position table).
Both directions use the same mapping: `titan_mimo.hf.files` reads our tensors (or this rank's
shard of them) from it, and `to_file_tensors` builds the file tensors from ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.vision.args import ViTArgs

__all__ = ["Source", "lm_sources", "projector_sources", "to_file_tensors", "vit_sources"]


@dataclass(frozen=True)
class Source:
    """Our tensor in terms of file tensors."""

    names: tuple[str, ...]
    """File tensor names: one, or one per expert (stacked along a new dim 0 into ours)."""
    rows: tuple[int, int] | None = None
    """Ours is rows [start, stop) (dim 0) of the file tensor."""
    file_shape: tuple[int, ...] | None = None
    """The file tensor's shape where it is a reshape of ours (same elements, row-major)."""
    stacked: bool = False
    """Ours is the file tensors `names` stacked along a new dim 0 (one per expert)."""


def _one(name: str, rows: tuple[int, int] | None = None, file_shape: tuple[int, ...] | None = None) -> Source:
    return Source((name,), rows, file_shape)


def _split(name: str, widths: dict[str, int]) -> dict[str, Source]:
    """Consecutive row ranges of one fused file tensor, in the order given."""
    out, start = {}, 0
    for key, width in widths.items():
        out[key] = _one(name, (start, start + width))
        start += width
    return out


def lm_sources(args: HybridLMArgs, prefix: str = "") -> dict[str, Source]:
    """HybridLM fqn -> Source in a nemotron_h folder (`prefix`: "language_model." in an Omni folder)."""
    b = f"{prefix}backbone."
    out = {"tok_embeddings.weight": _one(f"{b}embeddings.weight"), "norm.weight": _one(f"{b}norm_f.weight"),
           "output.weight": _one(f"{prefix}lm_head.weight")}
    inner = args.mamba_n_heads * args.mamba_head_dim
    bc = args.mamba_n_groups * args.mamba_d_state
    for i, kind in enumerate(args.layer_pattern):
        ours, theirs = f"layers.{i}.", f"{b}layers.{i}."
        out[f"{ours}norm.weight"] = _one(f"{theirs}norm.weight")
        m = f"{theirs}mixer."
        if kind == "M":
            # in_proj rows: [z | x B C | dt]; conv1d channels: [x | B | C] (transformers' split order).
            for key, src in _split(f"{m}in_proj.weight", {"z": inner, "x": inner, "B": bc, "C": bc,
                                                          "dt": args.mamba_n_heads}).items():
                out[f"{ours}mixer.in_proj_{key}.weight"] = src
            for param in ("weight", "bias"):
                for key, src in _split(f"{m}conv1d.{param}", {"x": inner, "B": bc, "C": bc}).items():
                    out[f"{ours}mixer.conv_{key}.{param}"] = src
            for param in ("dt_bias", "A_log", "D"):
                out[f"{ours}mixer.{param}"] = _one(f"{m}{param}")
            out[f"{ours}mixer.norm.weight"] = _one(f"{m}norm.weight")
            out[f"{ours}mixer.out_proj.weight"] = _one(f"{m}out_proj.weight")
        elif kind == "*":
            for mine, hf in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
                out[f"{ours}attn.{mine}.weight"] = _one(f"{m}{hf}.weight")
        elif kind == "-":
            out[f"{ours}mlp.w1.weight"] = _one(f"{m}up_proj.weight")
            out[f"{ours}mlp.w2.weight"] = _one(f"{m}down_proj.weight")
        elif kind == "E":
            out.update(_moe_sources(args, f"{ours}moe.", m))
        else:
            raise ValueError(f"layer_pattern {args.layer_pattern!r}: no Nemotron-H block for {kind!r}")
    return out


def _moe_sources(args: HybridLMArgs, ours: str, m: str) -> dict[str, Source]:
    experts = range(args.n_routed_experts)
    out = {f"{ours}gate.weight": _one(f"{m}gate.weight"),
           f"{ours}gate.e_score_correction_bias": _one(f"{m}gate.e_score_correction_bias"),
           f"{ours}experts.up_proj": Source(tuple(f"{m}experts.{e}.up_proj.weight" for e in experts), stacked=True),
           f"{ours}experts.down_proj": Source(tuple(f"{m}experts.{e}.down_proj.weight" for e in experts),
                                             stacked=True)}
    if args.moe_shared_expert_intermediate_size:
        out[f"{ours}shared_experts.w1.weight"] = _one(f"{m}shared_experts.up_proj.weight")
        out[f"{ours}shared_experts.w2.weight"] = _one(f"{m}shared_experts.down_proj.weight")
    if args.moe_latent_size is not None:
        out[f"{ours}fc1_latent_proj.weight"] = _one(f"{m}fc1_latent_proj.weight")
        out[f"{ours}fc2_latent_proj.weight"] = _one(f"{m}fc2_latent_proj.weight")
    return out


def vit_sources(args: ViTArgs, prefix: str) -> dict[str, Source]:
    """ViT fqn -> Source under a RADIO `prefix` ("radio_model.model." in a radio folder,
    "vision_model.radio_model.model." in an Omni folder). Our final norm is not RADIO's: the
    caller maps it (the Omni model's vision_final_layernorm)."""
    g = f"{prefix}patch_generator."
    grid = args.base_grid
    out = {"patch_embed.weight": _one(f"{g}embedder.weight"),
           "pos_embed": _one(f"{g}pos_embed", file_shape=(1, grid * grid, args.dim))}
    if args.n_register_tokens:
        # RADIO's class and register tokens are one table; ours are all "register" tokens
        # (both are learned prefix tokens dropped from the features).
        out["register_tokens"] = _one(f"{g}cls_token.token")
    for i in range(args.n_layers):
        ours, theirs = f"layers.{i}.", f"{prefix}blocks.{i}."
        for param in ("weight", "bias"):
            for key, src in _split(f"{theirs}attn.qkv.{param}", {"wq": args.dim, "wk": args.dim,
                                                                  "wv": args.dim}).items():
                out[f"{ours}attn.{key}.{param}"] = src
            out[f"{ours}attn.wo.{param}"] = _one(f"{theirs}attn.proj.{param}")
            out[f"{ours}attn_norm.{param}"] = _one(f"{theirs}norm1.{param}")
            out[f"{ours}mlp_norm.{param}"] = _one(f"{theirs}norm2.{param}")
            out[f"{ours}mlp.w1.{param}"] = _one(f"{theirs}mlp.fc1.{param}")
            out[f"{ours}mlp.w2.{param}"] = _one(f"{theirs}mlp.fc2.{param}")
        if args.layer_scale:
            out[f"{ours}attn_scale"] = _one(f"{theirs}layer_scale1.lambda1")
            out[f"{ours}mlp_scale"] = _one(f"{theirs}layer_scale2.lambda1")
    return out


def projector_sources(args: ViTArgs) -> dict[str, Source]:
    """Projector fqn -> Source in an Omni folder (`mlp1` = RMSNorm, Linear, ReLU², Linear)."""
    return {"norm.weight": _one("mlp1.0.weight"), "w1.weight": _one("mlp1.1.weight"),
            "w2.weight": _one("mlp1.3.weight")}


def prefixed(prefix: str, sources: dict[str, Source]) -> dict[str, Source]:
    return {f"{prefix}{k}": v for k, v in sources.items()}


def to_file_tensors(ours: dict[str, torch.Tensor], sources: dict[str, Source]) -> dict[str, torch.Tensor]:
    """Full tensors of ours (by fqn) -> the file tensors they make up. Every file tensor built
    from row slices must be covered exactly, in order (a gap means a mapping error)."""
    missing = sorted(set(sources) - set(ours))
    if missing:
        raise ValueError(f"no tensor for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    pieces: dict[str, list[tuple[int, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for fqn, src in sources.items():
        t = ours[fqn]
        if src.stacked:
            if t.shape[0] != len(src.names):
                raise ValueError(f"{fqn}: {t.shape[0]} experts, the mapping names {len(src.names)}")
            out.update(zip(src.names, t.unbind(0)))
        elif src.rows is not None:
            pieces.setdefault(src.names[0], []).append((src.rows[0], t))
            if t.shape[0] != src.rows[1] - src.rows[0]:
                raise ValueError(f"{fqn}: {t.shape[0]} rows, the mapping expects {src.rows[1] - src.rows[0]}")
        else:
            out[src.names[0]] = t.reshape(src.file_shape) if src.file_shape is not None else t
    for name, parts in pieces.items():
        parts.sort(key=lambda p: p[0])
        end = 0
        for start, t in parts:
            if start != end:
                raise ValueError(f"{name}: rows {end}..{start} come from no tensor of ours")
            end += t.shape[0]
        out[name] = torch.cat([t for _, t in parts])
    return out
