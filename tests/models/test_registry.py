"""build_model / model_args registry."""

import pytest
import torch

from titan_mimo.models import MODEL_NAMES, HybridLM, VisionModule, build_model, model_args


def test_names():
    assert set(MODEL_NAMES) == {
        "vit/debug", "vit/debug_small", "vit/h16", "hybrid_lm/debug", "hybrid_lm/hybrid_2b", "hybrid_lm/attn_1b",
        "hybrid_lm/debug_moe", "hybrid_lm/nemotron_moe_20l", "hybrid_lm/nemotron_moe_1gpu",
    }


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid names: vit/debug, vit/debug_small, vit/h16"):
        build_model("vit/huge")


def test_overrides_and_copy():
    assert model_args("vit/debug", out_dim=2048).out_dim == 2048
    assert model_args("vit/debug").out_dim == 64  # flavors are not mutated
    lm = build_model("hybrid_lm/debug", vocab_size=300)
    assert isinstance(lm, HybridLM) and lm.output.out_features == 300
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['hidden'\]"):
        build_model("hybrid_lm/debug", hidden=3)
    with pytest.raises(ValueError, match="n_kv_heads"):
        build_model("hybrid_lm/debug", n_kv_heads=3)


@pytest.mark.parametrize("name", ["vit/h16", "hybrid_lm/hybrid_2b", "hybrid_lm/attn_1b"])
def test_meta_build_has_no_buffers(name):
    with torch.device("meta"):
        model = build_model(name)
    assert all(p.is_meta for p in model.parameters())
    assert not list(model.buffers())
    assert isinstance(model, (HybridLM, VisionModule))
