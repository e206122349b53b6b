"""Causal GQA attention with RoPE."""

import torch

from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language.attention import Attention, apply_rope, rope_cos_sin

ARGS = HybridLMArgs(dim=32, n_heads=4, n_kv_heads=2, head_dim=8, layer_pattern="*")


def _attention(args=ARGS):
    attn = Attention(args)
    init_model_for_testing(attn, 0)
    return attn.double()


def test_causal():
    attn = _attention()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 5] += 1.0
    y, y2 = attn(x), attn(x2)
    assert y.shape == (2, 9, 32)
    assert (y[:, :5] - y2[:, :5]).abs().max().item() < 1e-12
    assert (y[:, 5:] - y2[:, 5:]).abs().min().item() > 0


def test_gqa_equals_mha_with_repeated_kv_weights():
    gqa = _attention()
    mha = Attention(HybridLMArgs(dim=32, n_heads=4, n_kv_heads=4, head_dim=8, layer_pattern="*"))
    mha = mha.double()
    with torch.no_grad():
        mha.wq.weight.copy_(gqa.wq.weight)
        mha.wo.weight.copy_(gqa.wo.weight)
        # kv head j serves query heads 2j and 2j+1.
        mha.wk.weight.copy_(gqa.wk.weight.view(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32))
        mha.wv.weight.copy_(gqa.wv.weight.view(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32))
    x = torch.randn(1, 7, 32, dtype=torch.float64)
    assert (gqa(x) - mha(x)).abs().max().item() < 1e-12


def test_rope_is_relative():
    cos, sin = rope_cos_sin(16, 8, 10000.0, torch.device("cpu"))
    q = torch.randn(8, dtype=torch.float64)
    k = torch.randn(8, dtype=torch.float64)
    rot = lambda v: apply_rope(v.expand(1, 16, 1, 8), cos.double(), sin.double())[0, :, 0]
    rq, rk = rot(q), rot(k)
    # Position 0 is the identity; scores depend only on the offset between positions.
    assert torch.allclose(rq[0], q)
    assert abs(rq[3] @ rk[1] - rq[7] @ rk[5]) < 1e-5
