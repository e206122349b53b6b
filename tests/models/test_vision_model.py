"""ViT encoder and VisionModule: shapes, mixed sizes, position table, prefix tokens, errors."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from titan_mimo.models import build_model
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.vision import model as vision_model


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


def test_pack_lengths_and_block_diagonal_mask():
    cu_seqlens, max_seqlen = vision_model.pack_lengths([5, 3, 7], torch.device("cpu"))
    assert cu_seqlens.dtype == torch.int32
    assert cu_seqlens.tolist() == [0, 5, 8, 15]
    assert max_seqlen == 7 and type(max_seqlen) is int
    segment_ids = torch.repeat_interleave(torch.arange(3), torch.tensor([5, 3, 7]))
    expected = segment_ids[:, None] == segment_ids[None, :]
    assert torch.equal(vision_model.block_diagonal_mask(cu_seqlens, 15), expected)
    assert vision_model.pack_lengths([4], torch.device("cpu"))[0].tolist() == [0, 4]
    with pytest.raises(ValueError, match="non-empty"):
        vision_model.pack_lengths([3, 0], torch.device("cpu"))


def test_packed_on_cpu_keeps_the_dense_mask(monkeypatch):
    """The varlen kernel is CUDA-only: on CPU the dense block-diagonal mask runs even where
    torch has varlen_attn."""
    def no_varlen(*args):
        raise AssertionError("varlen_attn called on CPU")

    monkeypatch.setattr(vision_model, "varlen_attn", no_varlen)
    model = _vision()
    assert model([torch.randn(3, 16, 16), torch.randn(3, 16, 32)]).shape == (4 + 8, 64)


def _needs_cuda_varlen():
    return pytest.mark.skipif(
        not torch.cuda.is_available() or vision_model.varlen_attn is None
        or torch.cuda.get_device_capability()[0] < 8,
        reason="needs CUDA sm80+ and torch.nn.attention.varlen (torch >= 2.10)")


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _encode_and_backward(model, images, weight):
    """Output, image gradients and parameter gradients of sum(model(images) * weight)."""
    model.zero_grad(set_to_none=True)
    leaves = [im.clone().requires_grad_() for im in images]
    out = model(leaves)
    (out.float() * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), [im.grad for im in leaves], grads


def _assert_close_bf16(got, ref):
    (out, image_grads, param_grads), (ref_out, ref_image_grads, ref_param_grads) = got, ref
    assert _rel_err(out, ref_out) < 2e-2
    for i, (g, r) in enumerate(zip(image_grads, ref_image_grads)):
        assert _rel_err(g, r) < 2e-2, f"image {i}"
    for name, r in ref_param_grads.items():
        # wk's bias adds q·b_k to every key of a query alike, which softmax ignores: its true
        # gradient is exactly zero, so what either kernel leaves there is round-off noise.
        if not name.endswith("attn.wk.bias"):
            assert _rel_err(param_grads[name], r) < 2e-2, name


_MIXED_SIZES = [(32, 32), (64, 48), (16, 16), (48, 64), (8, 8)]


def _cuda_case(dim, n_heads, sizes, seed=0):
    model = _vision(dim=dim, n_heads=n_heads, mlp_dim=2 * dim).cuda().bfloat16()
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, h, w, generator=gen).cuda() for h, w in sizes]
    n_out = sum(model.tokens_per_image(h, w) for h, w in sizes)
    weight = torch.randn(n_out, model.args.out_dim, generator=gen).cuda()
    return model, images, weight


@_needs_cuda_varlen()
@pytest.mark.parametrize("dim, n_heads", [(160, 2), (128, 2)], ids=["head_dim80", "head_dim64"])
def test_varlen_matches_dense_mask_bf16(monkeypatch, dim, n_heads):
    """On CUDA in bf16 the packed path runs varlen_attn once per block on the whole pack
    without a device sync, and its output, image gradients and parameter gradients match the
    dense block-diagonal mask's (bf16 noise only)."""
    model, images, weight = _cuda_case(dim, n_heads, _MIXED_SIZES)
    calls = []
    real_varlen = vision_model.varlen_attn

    def spy(*args):
        calls.append(args[0].shape)
        return real_varlen(*args)

    monkeypatch.setattr(vision_model, "varlen_attn", spy)
    _encode_and_backward(model, images, weight)  # warm-up: lazy CUDA/cuBLAS init may sync
    calls.clear()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = _encode_and_backward(model, images, weight)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    n_tokens = sum(1 + (h // 4) * (w // 4) for h, w in _MIXED_SIZES)
    assert calls == [torch.Size([n_tokens, n_heads, dim // n_heads])] * model.args.n_layers

    monkeypatch.setattr(vision_model, "varlen_attn", None)
    ref = _encode_and_backward(model, images, weight)
    assert len(calls) == model.args.n_layers  # the reference did not touch varlen
    _assert_close_bf16(got, ref)

    model.float()  # FlashAttention has no fp32: on CUDA fp32 falls back to the dense mask
    monkeypatch.setattr(vision_model, "varlen_attn", spy)
    model(images)
    assert len(calls) == model.args.n_layers


@_needs_cuda_varlen()
def test_varlen_under_per_block_compile():
    """Blocks compiled one by one (fullgraph: no graph break around varlen_attn) match eager
    varlen, also after a new mix of sizes makes the lengths dynamic."""
    model, _, _ = _cuda_case(160, 2, _MIXED_SIZES)
    compiled, _, _ = _cuda_case(160, 2, _MIXED_SIZES)
    for block in compiled.encoder.layers.values():
        block.compile(fullgraph=True)
    for seed, sizes in enumerate([_MIXED_SIZES, [(16, 32), (64, 64), (8, 8)]]):
        _, images, weight = _cuda_case(160, 2, sizes, seed)
        _assert_close_bf16(_encode_and_backward(compiled, images, weight),
                           _encode_and_backward(model, images, weight))
