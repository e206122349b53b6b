"""merge_embeddings and the MimoModel composite."""

import subprocess
import sys

import pytest
import torch

from titan_mimo.models import MimoModel, build_model, merge_embeddings
from titan_mimo.models.common import init_model_for_testing

IMAGE_ID = 250


def test_rows_land_in_placeholder_positions_row_major():
    h = torch.zeros(2, 5, 3)
    tokens = torch.tensor([[1, IMAGE_ID, IMAGE_ID, 2, 3], [IMAGE_ID, 4, 5, 6, IMAGE_ID]])
    emb = torch.arange(4.0)[:, None].expand(4, 3) + 1
    out = merge_embeddings(h, tokens, {IMAGE_ID: emb})
    assert out[0, 1].tolist() == [1.0] * 3 and out[0, 2].tolist() == [2.0] * 3
    assert out[1, 0].tolist() == [3.0] * 3 and out[1, 4].tolist() == [4.0] * 3
    assert out[0, 0].abs().sum() == 0 and out[1, 1:4].abs().sum() == 0
    assert h.abs().sum() == 0  # out of place


def test_two_modalities():
    h = torch.zeros(1, 4, 2)
    tokens = torch.tensor([[7, 8, 7, 8]])
    out = merge_embeddings(h, tokens, {7: torch.ones(2, 2), 8: 2 * torch.ones(2, 2)})
    assert out[0, :, 0].tolist() == [1.0, 2.0, 1.0, 2.0]


def test_count_mismatch_error():
    tokens = torch.tensor([[IMAGE_ID, IMAGE_ID, 1]])
    message = f"placeholder id {IMAGE_ID}: 2 placeholder positions .* 3 embedding rows"
    with pytest.raises(ValueError, match=message):
        merge_embeddings(torch.zeros(1, 3, 4), tokens, {IMAGE_ID: torch.zeros(3, 4)})


def test_gradients_flow():
    h = torch.randn(1, 4, 3, requires_grad=True)
    emb = torch.randn(2, 3, requires_grad=True)
    tokens = torch.tensor([[0, IMAGE_ID, 1, IMAGE_ID]])
    weight = torch.randn(1, 4, 3)
    (merge_embeddings(h, tokens, {IMAGE_ID: emb}) * weight).sum().backward()
    assert torch.equal(emb.grad, weight[0, [1, 3]])
    assert torch.equal(h.grad[0, [0, 2]], weight[0, [0, 2]])
    assert h.grad[0, [1, 3]].abs().sum() == 0


def _merge_masked_scatter(h_BSD, tokens_BS, embeds):
    """The former implementation (a device->host sync in the count and in masked_scatter's
    backward): the reference the sync-free one must match bit for bit."""
    for placeholder_id, emb_ND in embeds.items():
        h_BSD = h_BSD.masked_scatter((tokens_BS == placeholder_id).unsqueeze(-1), emb_ND.to(h_BSD.dtype))
    return h_BSD


def _bits(t):
    """Bit patterns, so -0.0 and 0.0 differ and the comparison is exactly bitwise."""
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16}[t.dtype])


def _merge_outputs(merge, h_BSD, tokens_BS, embeds, weight_BSD):
    h = h_BSD.detach().clone().requires_grad_()
    embs = {i: e.detach().clone().requires_grad_() for i, e in embeds.items()}
    out = merge(h, tokens_BS, embs)
    (out.float() * weight_BSD).sum().backward()
    return [out.detach(), h.grad] + [e.grad for e in embs.values()]


def _layouts():
    """(name, tokens) with placeholder ids 7 and 8: several samples, none, every position,
    both ids interleaved, a placeholder first and last."""
    g = torch.Generator().manual_seed(0)
    several = torch.randint(0, 6, (3, 9), generator=g)
    several[0, 2:5] = 7
    several[2, 0] = 7
    several[2, 8] = 7
    two_ids = several.clone()
    two_ids[1, 1:7] = torch.tensor([8, 7, 8, 8, 7, 8])
    return [("several_samples", several), ("none", torch.randint(0, 6, (3, 9), generator=g)),
            ("all_positions", torch.full((3, 9), 7)), ("two_ids", two_ids)]


_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("h_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,tokens", _layouts(), ids=[name for name, _ in _layouts()])
def test_matches_masked_scatter_bitwise(name, tokens, h_dtype, device):
    """Values and gradients (to h and to every emb, an emb of zero rows too) are bitwise those
    of the masked_scatter formulation, fp32 and bf16 hidden states (fp32 embeddings, cast)."""
    g = torch.Generator().manual_seed(1)
    d = 4
    h = torch.randn(*tokens.shape, d, generator=g).to(device, h_dtype)
    embeds = {i: torch.randn(int((tokens == i).sum()), d, generator=g).to(device) for i in (7, 8)}
    weight = torch.randn(*tokens.shape, d, generator=g).to(device)
    tokens = tokens.to(device)
    got = _merge_outputs(merge_embeddings, h, tokens, embeds, weight)
    want = _merge_outputs(_merge_masked_scatter, h, tokens, embeds, weight)
    assert all(t is not None for t in got)  # an emb of zero rows gets its (empty) gradient too
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(_bits(a), _bits(b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_sync_on_cuda():
    """Forward and backward queue no device->host synchronisation: sync debug mode raises on one."""
    tokens = _layouts()[3][1].cuda()
    embeds = {i: torch.randn(int((tokens == i).sum()), 4, device="cuda", requires_grad=True) for i in (7, 8)}
    h = torch.randn(*tokens.shape, 4, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = merge_embeddings(h, tokens, embeds)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = _merge_masked_scatter(h, tokens, embeds)
    assert torch.equal(out, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_count_mismatch_fails_on_cuda():
    """On CUDA the count check is a device-side assert: the process fails at the next sync.
    In a child process, since a device-side assert leaves the CUDA context unusable."""
    code = ("import torch\n"
            "from titan_mimo.models import merge_embeddings\n"
            "tokens = torch.tensor([[7, 7, 1]], device='cuda')\n"
            "merge_embeddings(torch.zeros(1, 3, 4, device='cuda'), tokens, {7: torch.zeros(3, 4, device='cuda')})\n"
            "torch.cuda.synchronize()\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "device-side assert" in proc.stderr, proc.stderr[-3000:]


def _mimo(seed=0):
    lm = build_model("hybrid_lm/debug")
    vision = build_model("vit/debug", out_dim=lm.args.dim)
    model = MimoModel({"vision": vision}, lm, {"vision": IMAGE_ID})
    init_model_for_testing(model, seed)
    return model


def test_forward_with_different_image_sizes():
    model = _mimo()
    # Sample 0: one 16x16 image (4 tokens); sample 1: one 16x32 image (8 tokens).
    tokens = torch.randint(0, 200, (2, 16))
    tokens[0, 1:5] = IMAGE_ID
    tokens[1, 2:10] = IMAGE_ID
    images = {"vision": [torch.randn(3, 16, 16), torch.randn(3, 16, 32)]}
    logits = model(tokens, images)
    assert logits.shape == (2, 16, 256)
    # Equals the pieces run by hand: encoder → merge → LM.
    h = merge_embeddings(
        model.language.embed(tokens), tokens, {IMAGE_ID: model.encoders["vision"](images["vision"])}
    )
    assert torch.equal(logits, model.language.forward_hidden(h))
    logits.sum().backward()
    assert model.encoders["vision"].encoder.patch_embed.weight.grad.abs().sum() > 0


def test_text_only_batch():
    model = _mimo()
    tokens = torch.randint(0, 200, (2, 8))
    assert torch.equal(model(tokens, {"vision": []}), model.language(tokens))
    assert torch.equal(model(tokens, {}), model.language(tokens))


def test_errors():
    model = _mimo()
    with pytest.raises(ValueError, match="unknown modalities"):
        model(torch.zeros(1, 4, dtype=torch.long), {"audio": []})
    with pytest.raises(ValueError, match="same modalities"):
        MimoModel({"vision": model.encoders["vision"]}, model.language, {"audio": 3})

