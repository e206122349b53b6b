"""ViT encoder and VisionModule: shapes, mixed sizes, position table, prefix tokens, errors."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from titan_mimo.models import build_model
from titan_mimo.models.common import init_model_for_testing


def _vision(seed=0, **overrides):
    model = build_model("vit/debug", **overrides)
    init_model_for_testing(model, seed)
    return model


@pytest.mark.parametrize("hw, n_tokens", [((16, 16), 4), ((16, 24), 6), ((32, 32), 16)])
def test_shapes_and_tokens_per_image(hw, n_tokens):
    model = _vision()
    assert model.tokens_per_image(*hw) == n_tokens
    emb = model([torch.randn(3, *hw), torch.randn(3, *hw)])
    assert emb.shape == (2 * n_tokens, 64)
    assert model(torch.randn(3, 3, *hw)).shape == (3 * n_tokens, 64)


def test_mixed_sizes_keep_image_order():
    model = _vision()
    images = [torch.randn(3, 16, 16), torch.randn(3, 32, 16), torch.randn(3, 16, 16)]
    emb = model(images)
    assert emb.shape == (4 + 8 + 4, 64)
    singles = [model([image]) for image in images]
    assert torch.allclose(emb, torch.cat(singles), atol=1e-6)


def test_empty_list():
    emb = _vision()([])
    assert emb.shape == (0, 64) and emb.dtype == torch.float32


def test_out_dim_override():
    assert _vision(out_dim=48)([torch.randn(3, 16, 16)]).shape == (4, 48)


def test_position_embedding_at_base_grid_is_the_table():
    encoder = _vision().encoder
    pos = encoder.position_embedding(4, 4)
    assert torch.equal(pos, encoder.pos_embed.reshape(16, 32))
    assert encoder.position_embedding(6, 2).shape == (12, 32)


def test_prefix_tokens_dropped_and_used():
    model = _vision(use_cls_token=True, n_register_tokens=2)
    assert model.encoder.cls_token.shape == (1, 32)
    assert model.encoder.register_tokens.shape == (2, 32)
    images = torch.randn(2, 3, 16, 16)
    assert model.encoder(images).shape == (2, 16, 32)
    before = model(images)
    with torch.no_grad():
        model.encoder.register_tokens.add_(torch.randn(2, 32))
    # Registers are dropped from the output but still attended to.
    assert (model(images) - before).abs().max().item() > 1e-5


@pytest.mark.parametrize("hw", [(15, 16), (16, 20), (12, 16)])
def test_bad_sizes(hw):
    model = _vision()
    with pytest.raises(ValueError, match=rf"h={hw[0]}, w={hw[1]}.*patch_size \* pixel_shuffle"):
        model.tokens_per_image(*hw)
    with pytest.raises(ValueError, match="must be a multiple"):
        model([torch.randn(3, *hw)])


def test_flops_match_flop_counter():
    model = _vision()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model([torch.randn(3, 16, 24)] * 2)
    assert counter.get_total_flops() * 3 == 2 * model.flops_per_image(16, 24)


def test_h16_size():
    with torch.device("meta"):
        model = build_model("vit/h16")
    assert abs(model.num_params() - 630e6) / 630e6 < 0.05
    assert model.tokens_per_image(1024, 1024) == 1024
    # Dominated by 3 · 2 · params · patches; attention adds 3 · 4 · T² · D · L on top.
    linear_flops = 6 * 4097 * 32 * 12 * 1280 * 1280
    attention_flops = 12 * 4097**2 * 1280 * 32
    assert abs(model.flops_per_image(1024, 1024) / (linear_flops + attention_flops) - 1) < 0.03


def test_mixed_sizes_run_packed_and_match_one_by_one():
    """Mixed sizes take the packed path (one encoder pass, block-diagonal attention) and give
    exactly what encoding each image alone gives."""
    model = build_model("vit/debug")
    init_model_for_testing(model, seed=3)
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(3, h, w, generator=gen) for h, w in [(8, 8), (8, 16), (16, 16), (8, 8)]]
    calls = []
    hook = model.encoder.layers["0"].register_forward_hook(lambda *a: calls.append(1))
    packed = model(images)
    hook.remove()
    assert len(calls) == 1
    one_by_one = torch.cat([model([im]) for im in images])
    assert packed.shape == (1 + 2 + 4 + 1, model.args.out_dim)
    torch.testing.assert_close(packed, one_by_one, atol=1e-6, rtol=1e-5)
