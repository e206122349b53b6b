"""benchmarks/hf_shapes: the config.json files of released models written by hand (README there)
build on the meta device with the parameter counts of the released models, and the one-GPU train
configs that step them resolve. No weights, no compute: a few seconds on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from titan_mimo import hf
from titan_mimo.hf.models import WRAPPERS

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "benchmarks" / "hf_shapes"
NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
"""Nemotron-3-Nano-30B-A3B's 52 layers: 23 Mamba2, 23 MoE, 6 attention."""

PARAMS = {
    # ViT-H/16 (630.7M, the tech report's "631M") + its 128 x 128 position table (21.0M).
    "c_radio_v4_h": 651_645_440,
    # The model card's "31.6B total".
    "nemotron3_nano_30b_a3b": 31_577_937_344,
    "nemotron3_nano_30b_a3b_first13": 7_471_253_376,
    # The LM + C-RADIOv4-H + the projector (32.0M); no audio tower, no video patch projection.
    "nemotron3_nano_omni_30b_a3b": 32_261_569_472,
    "nemotron3_nano_omni_30b_a3b_first8": 5_459_060_608,
}
VISION_PARAMS = 683_632_128
"""C-RADIOv4-H with the Omni projector (pixel shuffle 2, 5120 -> 4096 -> 2688)."""


def _depth(name: str) -> int:
    """A folder's LM depth: the released 52, or the N of a `_firstN` cut."""
    return int(name.rpartition("_first")[2]) if "_first" in name else 52


def _build(name: str):
    layout = hf.describe(SHAPES / name)
    with torch.device("meta"):
        return layout, WRAPPERS[layout.kind](layout)


def _count(module: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def test_every_shipped_folder_is_listed():
    assert sorted(p.parent.name for p in SHAPES.glob("*/config.json")) == sorted(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_builds_on_meta_with_the_released_parameter_count(name):
    layout, model = _build(name)
    assert _count(model) == PARAMS[name]
    if layout.lm is not None:
        a = layout.lm
        assert (a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.vocab_size) == (2688, 32, 2, 128, 131072)
        assert (a.mamba_n_heads, a.mamba_head_dim, a.mamba_d_state, a.mamba_n_groups) == (64, 64, 128, 8)
        assert (a.n_routed_experts, a.n_experts_per_tok, a.moe_intermediate_size,
                a.moe_shared_expert_intermediate_size, a.routed_scaling_factor) == (128, 6, 1856, 3712, 2.5)
        assert a.layer_pattern == NANO_PATTERN[:_depth(name)]
    if layout.vit is not None:
        v = layout.vit
        assert (v.dim, v.n_layers, v.n_heads, v.mlp_dim, v.patch_size, v.base_grid) == (1280, 32, 16, 5120, 16, 128)
        assert v.n_register_tokens == 10 and v.pos_embed_rule == "radio" and not v.final_norm
    if layout.kind == "nemotron_h_omni":
        assert layout.image_token_id == 18 and _count(model, "mimo.encoders.") == VISION_PARAMS


def test_nano_active_parameters_are_the_published_ones():
    """The model card's 3.2B active parameters (3.6B with the input embedding): all but the
    routed experts, of which 6 of 128 per token."""
    layout, model = _build("nemotron3_nano_30b_a3b")
    a = layout.lm
    routed = sum(p.numel() for n, p in model.named_parameters() if ".moe.experts." in n)
    active = PARAMS["nemotron3_nano_30b_a3b"] - routed + routed * a.n_experts_per_tok // a.n_routed_experts
    assert active == 3_580_073_408
    assert active - a.vocab_size * a.dim == 3_227_751_872


@pytest.mark.parametrize("cut", [n for n in sorted(PARAMS) if "_first" in n])
def test_the_cut_folders_differ_from_the_released_ones_in_depth_alone(cut):
    def text(c):
        return c.get("text_config", c)
    depth = _depth(cut)
    full = json.loads((SHAPES / cut.rpartition("_first")[0] / "config.json").read_text())
    part = json.loads((SHAPES / cut / "config.json").read_text())
    assert text(part).pop("hybrid_override_pattern") == text(full).pop("hybrid_override_pattern")[:depth]
    assert (text(part).pop("num_hidden_layers"), text(full).pop("num_hidden_layers")) == (depth, 52)
    assert part == full


@pytest.mark.parametrize("name", ["nemotron3_nano_30b_a3b", "c_radio_v4_h", "nemotron3_nano_omni_30b_a3b"])
def test_transformers_builds_the_same_shapes(name):
    """transformers (the oracle) counts the same parameters, less the tensors titan_mimo leaves
    out: RADIO's identity LayerScale (value 1.0, not in C-RADIO's files) and the Omni model's
    video patch projection (video is not trained)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.nemotron_h_omni import NemotronH_Omni_Reasoning_V3, NemotronH_Omni_Reasoning_V3_Config
    path = SHAPES / name
    with torch.device("meta"):
        if name.startswith("nemotron3_nano_omni"):
            ref = NemotronH_Omni_Reasoning_V3(NemotronH_Omni_Reasoning_V3_Config.from_pretrained(path))
        elif name.startswith("nemotron3_nano"):
            ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(path))
        else:
            ref = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(path))
    left_out = sum(p.numel() for n, p in ref.named_parameters() if "layer_scale" in n or "video" in n)
    assert _count(ref) - left_out == PARAMS[name]


@pytest.mark.parametrize("config, patterns", [
    ("nemotron3_nano_lm_1gpu", {"language": NANO_PATTERN[:13]}),
    ("c_radio_v4_h_1gpu", {"language": NANO_PATTERN[:13], "vision": None}),
    ("nemotron3_nano_omni_1gpu", {"language": NANO_PATTERN[:8], "vision": None}),
])
def test_the_one_gpu_configs_resolve_to_the_folders_shapes(config, patterns, monkeypatch):
    from titan_mimo.train import prepare
    monkeypatch.chdir(ROOT)  # the configs name the folders relative to the repository root
    setup = prepare(["--config", f"train_configs/{config}.toml"])
    assert set(setup.args) == set(patterns)
    assert setup.args["language"].layer_pattern == patterns["language"]
    if "vision" in patterns:
        v = setup.args["vision"]
        assert (v.dim, v.n_layers, v.base_grid, v.n_register_tokens) == (1280, 32, 128, 10)
        assert (v.pixel_shuffle, v.projector_hidden, v.out_dim, v.projector_act) == (2, 4096, 2688, "relu2")
        assert setup.cfg.modules["vision"].placeholder_id == 18
