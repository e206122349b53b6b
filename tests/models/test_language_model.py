"""HybridLM: logits, flavor sizes, FLOPs, args validation (its pipeline stages: tests/test_stages.py)."""

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from titan_mimo.models import build_model
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language import HybridLMArgs


def _lm(seed=0, **overrides):
    model = build_model("hybrid_lm/debug", **overrides)
    init_model_for_testing(model, seed)
    return model


def test_logits_shape():
    model = _lm()
    logits = model(torch.randint(0, 256, (2, 19)))
    assert logits.shape == (2, 19, 256)
    assert torch.isfinite(logits).all()
    assert list(model.layers.keys()) == [str(i) for i in range(6)]


def _stage(full, first: int, last: int):
    """A copy of `full` trimmed to layers [first, last), with the embedding only from layer 0 and
    the head only to the end."""
    stage = copy.deepcopy(full)
    for key in list(stage.layers.keys()):
        if not first <= int(key) < last:
            del stage.layers[key]
    if first > 0:
        stage.tok_embeddings = None
    if last < len(full.layers):
        stage.norm = None
        stage.output = None
    return stage


def test_flavor_sizes():
    with torch.device("meta"):
        hybrid = build_model("hybrid_lm/hybrid_2b")
        attn = build_model("hybrid_lm/attn_1b")
    assert 1.8e9 <= hybrid.num_params() <= 2.3e9
    assert 1.2e9 <= attn.num_params() <= 1.5e9
    pattern = hybrid.args.layer_pattern
    assert pattern.count("M") / len(pattern) == pytest.approx(0.46, abs=0.05)
    assert pattern.count("*") / len(pattern) == pytest.approx(0.08, abs=0.02)


def test_attn_1b_flops_match_torchtitan_formula():
    with torch.device("meta"):
        model = build_model("hybrid_lm/attn_1b")
    seq = 4096
    a = model.args
    non_embedding = model.num_params() - model.tok_embeddings.weight.numel()
    expected = 6 * non_embedding + 12 * 16 * a.n_heads * a.head_dim * seq
    assert abs(model.flops_per_token(seq) / expected - 1) < 1e-3


@pytest.mark.parametrize("pattern", ["M", "*", "-", "M-*-M-"])
def test_flops_match_flop_counter(pattern):
    model = build_model("hybrid_lm/debug", layer_pattern=pattern)
    batch, seq = 2, 64
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 256, (batch, seq)))
    counted = 3 * counter.get_total_flops() / (batch * seq)
    # The counter also charges the conv's K-1 padded outputs that the causal conv discards.
    assert abs(model.flops_per_token(seq) / counted - 1) < 0.005


def test_stage_flops_sum_to_full():
    full = _lm()
    stages = [_stage(full, 0, 3), _stage(full, 3, 6)]
    assert sum(s.flops_per_token(32) for s in stages) == full.flops_per_token(32)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"layer_pattern": "M-x"}, "layer_pattern"),
        ({"layer_pattern": ""}, "layer_pattern"),
        ({"n_heads": 3}, "n_heads=3"),
        ({"mamba_n_heads": 6, "mamba_n_groups": 4}, "mamba_n_heads=6"),
    ],
)
def test_args_validation(overrides, field):
    with pytest.raises(ValueError, match=field):
        HybridLMArgs(**overrides)


def test_tp_divisors_only_for_present_blocks():
    assert set(HybridLMArgs(layer_pattern="*-").tp_divisors()) == {
        "vocab_size", "n_heads", "n_kv_heads", "mlp_hidden",
    }
    divisors = HybridLMArgs(layer_pattern="M").tp_divisors()
    assert divisors == {"vocab_size": 256, "mamba_n_heads": 4, "mamba_n_groups": 2}
