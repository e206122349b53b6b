"""Fused chunked head + cross-entropy: equals the unfused logits path, loss and gradients."""

import pytest
import torch
import torch.nn.functional as F

from titan_mimo.models import build_model
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.loss import linear_cross_entropy_sum


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_matches_unfused_cross_entropy_fp32(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(13, 8, generator=g, requires_grad=True)
    w = torch.randn(11, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (13,), generator=g)
    labels[[2, 9]] = -100
    ref = F.cross_entropy((h @ w.T).float(), labels, ignore_index=-100, reduction="sum")
    ref_gh, ref_gw = torch.autograd.grad(ref / 3.0, (h, w))
    out = linear_cross_entropy_sum(h, w, labels, chunk_tokens=chunk)
    gh, gw = torch.autograd.grad(out / 3.0, (h, w))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-6)
    assert gh[2].abs().max() == 0 and gh[9].abs().max() == 0  # unlabelled rows get no gradient


def test_model_forward_with_labels_equals_logits_loss():
    torch.manual_seed(0)
    lm = build_model("hybrid_lm/debug")
    init_model_for_testing(lm, 0)
    tokens = torch.randint(0, lm.args.vocab_size, (2, 12))
    labels = torch.randint(0, lm.args.vocab_size, (2, 12))
    labels[0, :3] = -100
    ref = F.cross_entropy(lm(tokens).flatten(0, 1).float(), labels.flatten(), reduction="sum")
    ref_grads = torch.autograd.grad(ref, list(lm.parameters()))
    out = lm(tokens, labels=labels)
    grads = torch.autograd.grad(out, list(lm.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="must be \\[N, D\\]"):
        linear_cross_entropy_sum(torch.zeros(2, 3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))
