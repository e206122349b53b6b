"""models/language/moe.py: routing against a direct transcription of Nemotron-H's formulas, the
block against transformers' `NemotronHMoE` (the oracle), the auxiliary loss against a hand
computation, the bias update, and the grouped-GEMM path against the looped one (GPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from titan_mimo.models import model_args
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.moe import (MoE, grouped_mm_experts, looped_experts, route,
                                            set_aux_loss_scale, update_correction_bias)


def transcribed_route(logits, bias, k, n_group, topk_group, norm, scaling):
    """Nemotron-H's router written out token by token, as the model card describes it."""
    t, e = logits.shape
    per = e // n_group
    experts, gates = [], []
    for i in range(t):
        s = torch.sigmoid(logits[i])
        c = s + bias
        group_score = [sorted(c[g * per:(g + 1) * per].tolist(), reverse=True)[:2] for g in range(n_group)]
        group_score = torch.tensor([sum(v) for v in group_score])
        eligible = set(group_score.argsort(descending=True)[:topk_group].tolist())
        masked = torch.tensor([c[j].item() if j // per in eligible else float("-inf") for j in range(e)])
        chosen = masked.argsort(descending=True)[:k]
        g = s[chosen]
        if norm:
            g = g / (g.sum() + 1e-20)
        experts.append(sorted(chosen.tolist()))
        gates.append({int(j): float(v) * scaling for j, v in zip(chosen, g)})
    return experts, gates


@pytest.mark.parametrize("n_group,topk_group,norm", [(1, 1, True), (4, 2, True), (4, 1, False)])
def test_route_matches_transcription(n_group, topk_group, norm):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 16, generator=g)
    # A large bias: choices differ from the unbiased ones, and the gates must ignore it.
    bias = torch.randn(16, generator=g)
    scores, experts, gates = route(logits, bias, top_k=3, n_group=n_group, topk_group=topk_group,
                                   norm_topk_prob=norm, scaling=2.5)
    want_experts, want_gates = transcribed_route(logits, bias, 3, n_group, topk_group, norm, 2.5)
    assert torch.equal(scores, logits.sigmoid())
    unbiased = route(logits, torch.zeros(16), top_k=3, n_group=n_group, topk_group=topk_group,
                     norm_topk_prob=norm, scaling=2.5)[1]
    assert any(sorted(a.tolist()) != sorted(b.tolist()) for a, b in zip(experts, unbiased))
    for i in range(64):
        assert sorted(experts[i].tolist()) == want_experts[i]
        for j, v in zip(experts[i].tolist(), gates[i].tolist()):
            assert v == pytest.approx(want_gates[i][j], rel=1e-6)


def _hf_moe(args, ours: MoE):
    transformers = pytest.importorskip("transformers")
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMoE

    cfg = transformers.NemotronHConfig(
        hidden_size=args.dim, n_routed_experts=args.n_routed_experts, num_experts_per_tok=args.n_experts_per_tok,
        moe_intermediate_size=args.moe_intermediate_size,
        moe_shared_expert_intermediate_size=args.moe_shared_expert_intermediate_size,
        moe_latent_size=args.moe_latent_size, n_group=args.n_group, topk_group=args.topk_group,
        norm_topk_prob=args.norm_topk_prob, routed_scaling_factor=args.routed_scaling_factor,
        layers_block_type=["moe"], mlp_hidden_act="relu2")
    hf = NemotronHMoE(cfg).float()
    with torch.no_grad():
        hf.gate.weight.copy_(ours.gate.weight)
        hf.gate.e_score_correction_bias.copy_(ours.gate.e_score_correction_bias)
        hf.experts.up_proj.copy_(ours.experts.up_proj)
        hf.experts.down_proj.copy_(ours.experts.down_proj)
        hf.shared_experts.up_proj.weight.copy_(ours.shared_experts.w1.weight)
        hf.shared_experts.down_proj.weight.copy_(ours.shared_experts.w2.weight)
        if args.moe_latent_size:
            hf.fc1_latent_proj.weight.copy_(ours.fc1_latent_proj.weight)
            hf.fc2_latent_proj.weight.copy_(ours.fc2_latent_proj.weight)
    return hf


def _moe(**overrides) -> MoE:
    args = model_args("hybrid_lm/debug_moe", **overrides)
    moe = MoE(args)
    init_model_for_testing(moe, seed=3)
    with torch.no_grad():  # a nonzero correction bias, so its use for choosing only is checked
        moe.gate.e_score_correction_bias.copy_(torch.randn(args.n_routed_experts,
                                                           generator=torch.Generator().manual_seed(1)) * 0.05)
        moe.gate.weight.mul_(20)  # spread the scores: distinct choices per token
    return moe


@pytest.mark.parametrize("latent", [None, 24])
def test_moe_matches_transformers(latent):
    moe = _moe(moe_latent_size=latent, moe_aux_loss_coeff=0.0)
    hf = _hf_moe(moe_args := model_args("hybrid_lm/debug_moe", moe_latent_size=latent), moe)
    del moe_args
    x = torch.randn(3, 10, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = moe(x), hf(x)
    assert float((ours - theirs).norm() / theirs.norm()) < 1e-6


def test_counts_only_in_training_forwards():
    moe = _moe()
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        moe(x)
    assert moe.gate.tokens_per_expert.sum() == 0
    moe(x)
    assert moe.gate.tokens_per_expert.sum() == 2 * 8 * 2


def test_aux_loss_gradient_is_the_hand_computed_loss():
    """The block's backward with the auxiliary loss equals the backward of out + coeff / N ×
    Σ_b S Σ_i P_bi f_bi written out from its definition (Megatron's sequence aux loss)."""
    moe = _moe()
    b, s, e, k, n_tokens = 3, 8, 8, 2, 40.0
    x = torch.randn(b, s, 64, generator=torch.Generator().manual_seed(5))
    probe = torch.randn(b, s, 64, generator=torch.Generator().manual_seed(6))
    set_aux_loss_scale([moe], 1.0 / n_tokens)
    (moe(x) * probe).sum().backward()
    got = moe.gate.weight.grad.clone()
    moe.zero_grad()

    moe.aux_loss_coeff = 0.0  # the same block without the injected gradient, plus the loss by hand
    out = moe(x)
    scores, experts, _ = route(moe.gate(x.reshape(-1, 64)), moe.gate.e_score_correction_bias, top_k=k,
                               n_group=2, topk_group=1, norm_topk_prob=True, scaling=2.5)
    aux = 0.0
    for seq in range(b):
        rows = slice(seq * s, (seq + 1) * s)
        p = scores[rows] / scores[rows].sum(-1, keepdim=True)
        big_p = p.mean(0)
        f = torch.bincount(experts[rows].flatten(), minlength=e).float() * e / (k * s)
        aux = aux + s * (big_p * f).sum()
    ((out * probe).sum() + 1e-2 / n_tokens * aux).backward()
    want = moe.gate.weight.grad
    assert float((got - want).norm() / want.norm()) < 1e-6
    # The auxiliary loss moved the router's gradient (it is not a no-op at this coefficient).
    moe.zero_grad()
    (moe(x) * probe).sum().backward()
    assert float((moe.gate.weight.grad - got).norm() / got.norm()) > 1e-4


def test_bias_update_is_sign_of_mean_minus_load():
    moe = _moe()
    before = moe.gate.e_score_correction_bias.clone()
    moe.gate.tokens_per_expert.fill_(3.0)
    counts = torch.tensor([4.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])  # mean 2
    update_correction_bias(moe, counts, rate=0.01)
    step = moe.gate.e_score_correction_bias - before
    assert torch.allclose(step, torch.tensor([-0.01, 0.01, 0, 0, 0, 0, 0, 0]))
    assert moe.gate.tokens_per_expert.sum() == 0


def test_flops_count_active_parameters():
    args = model_args("hybrid_lm/nemotron_moe_20l")
    per_token = MoE.forward_flops_per_token(args)
    active = (args.dim * args.n_routed_experts + args.n_experts_per_tok * 2 * args.dim * args.moe_intermediate_size
              + 2 * args.dim * args.moe_shared_expert_intermediate_size)
    assert per_token == 2 * active


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch._grouped_mm runs on CUDA")
def test_grouped_mm_matches_looped_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    e, d, f = 16, 256, 128
    counts = torch.randint(0, 40, (e,), device="cuda", generator=g)
    counts[3] = 0  # an expert with no tokens
    x = torch.randn(int(counts.sum()), d, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    up = (torch.randn(e, f, d, device="cuda", generator=g) * 0.05).bfloat16().requires_grad_()
    down = (torch.randn(e, d, f, device="cuda", generator=g) * 0.05).bfloat16().requires_grad_()
    outs, grads = [], []
    for fn in (looped_experts, grouped_mm_experts):
        y = fn(x, counts, up, down)
        y.float().square().sum().backward()
        outs.append(y.float())
        grads.append([t.grad.float().clone() for t in (x, up, down)])
        for t in (x, up, down):
            t.grad = None
    assert float((outs[0] - outs[1]).norm() / outs[0].norm()) < 1e-2
    for a, b in zip(*grads):
        assert float((a - b).norm() / a.norm()) < 2e-2


def test_debug_moe_flavor_exercises_every_block_kind():
    args = model_args("hybrid_lm/debug_moe")
    assert set(args.layer_pattern) == {"M", "E", "*", "-"}
    assert args.n_routed_experts >= 8 and args.n_experts_per_tok == 2 and args.n_group > 1
    with pytest.raises(ValueError, match="n_group=3 must divide n_routed_experts=8"):
        dataclasses.replace(args, n_group=3)
