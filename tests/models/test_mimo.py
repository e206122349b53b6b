"""merge_embeddings and the MimoModel composite."""

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
