"""Attention backends: SDPA is the reference; the FlashAttention-4 custom ops carry FA4's
contract ([B, S, H, E], grouped-query heads, the log-sum-exp its backward takes) through autograd
and torch.compile. On CPU a stand-in for `flash_attn.cute.interface` computes that contract in
plain PyTorch, so the wrapper's plumbing is checked against SDPA; on a GPU with flash-attn-4 the
real kernels are checked against SDPA within bf16 tolerance. Transformer Engine ("te") likewise:
a stand-in `DotProductAttention` with TE's constructor and output layout on CPU, the real one on a
GPU where transformer-engine is installed."""

import dataclasses
import importlib.util
import sys
import types
import typing

import pytest
import torch

from titan_mimo.models import attention_kernels as ak
from titan_mimo.models import flash_attn4 as fa
from titan_mimo.models import build_model
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language.attention import Attention
from titan_mimo.models.vision.args import ViTArgs


def _expand(q_BSHE, k_BSKE, v_BSKE):
    """[B, H, S, E] in at least fp32, kv heads repeated (query head i on kv head i // n_rep)."""
    n_rep = q_BSHE.shape[2] // k_BSKE.shape[2]
    dtype = torch.promote_types(q_BSHE.dtype, torch.float32)
    return [t.repeat_interleave(m, 2).transpose(1, 2).to(dtype)
            for t, m in ((q_BSHE, 1), (k_BSKE, n_rep), (v_BSKE, n_rep))]


def _probs(q, k, causal, scale=None):
    scores = q @ k.transpose(-1, -2) * (scale or q.shape[-1] ** -0.5)
    if causal:
        s = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    lse = scores.logsumexp(-1)
    return (scores - lse[..., None]).exp(), lse


def _reference(q_BSHE, k_BSKE, v_BSKE, causal, scale=None):
    """softmax(scale · q kᵀ) v [B, S, H, E] (scale 1/√E by default) and the log-sum-exp
    [B, H, S] (float32)."""
    q, k, v = _expand(q_BSHE, k_BSKE, v_BSKE)
    p, lse = _probs(q, k, causal, scale)
    return (p @ v).transpose(1, 2).contiguous().to(q_BSHE.dtype), lse.float()


def _reference_grads(q_BSHE, k_BSKE, v_BSKE, dout_BSHE, causal, scale):
    """dq, dk, dv of _reference's output by the textbook formulas (autograd is off inside a
    custom op), summed over the query heads that share a kv head."""
    q, k, v = _expand(q_BSHE, k_BSKE, v_BSKE)
    p, _ = _probs(q, k, causal, scale)
    do = dout_BSHE.transpose(1, 2).to(q.dtype)
    dp = do @ v.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * scale
    dq, dk, dv = ds @ k, ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ do
    b, kv = k_BSKE.shape[0], k_BSKE.shape[2]

    def fold(t):  # [B, H, S, E] -> [B, S, K, E]
        return t.view(b, kv, -1, *t.shape[2:]).sum(2).transpose(1, 2).contiguous()

    return (dq.transpose(1, 2).contiguous().to(q_BSHE.dtype), fold(dk).to(k_BSKE.dtype),
            fold(dv).to(v_BSKE.dtype))


def _fake_fa4_module():
    """What titan_mimo needs of flash_attn.cute.interface, in plain PyTorch."""
    module = types.ModuleType("flash_attn.cute.interface")

    def _flash_attn_fwd(q, k, v, softmax_scale=None, causal=False, return_lse=False):
        out, lse = _reference(q, k, v, causal, softmax_scale)
        return out, lse, None, None, None

    def _flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=None, causal=False):
        assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
        return _reference_grads(q, k, v, dout, causal, softmax_scale)

    module._flash_attn_fwd = _flash_attn_fwd
    module._flash_attn_bwd = _flash_attn_bwd
    return module


@pytest.fixture
def fake_fa4(monkeypatch):
    monkeypatch.setitem(sys.modules, fa._FA4_MODULE, _fake_fa4_module())


def _qkv(b=2, s=9, h=4, kv=2, e=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, s, n, e, dtype=dtype, generator=g).requires_grad_()
            for n in (h, kv, kv)]


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_backend_matches_the_reference(causal):
    q, k, v = _qkv()
    out = ak.attention_function("sdpa")(q, k, v, is_causal=causal)
    assert (out - _reference(q, k, v, causal)[0]).abs().max().item() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [8, 32])  # padded to 32 for FA4's backward; as it is
def test_fa4_ops_match_sdpa_values_and_gradients(fake_fa4, causal, head_dim, monkeypatch):
    monkeypatch.setattr(fa, "_fa4_head_dim_multiple", 32)  # as when the kernel fix is not applied
    widths = []
    real_forward = fa._fa4_forward
    monkeypatch.setattr(fa, "_fa4_forward", lambda q, *a: widths.append(q.shape[-1]) or real_forward(q, *a))
    q, k, v = _qkv(e=head_dim)
    grad = torch.randn(2, 9, 4, head_dim, dtype=torch.float64)
    results = []
    for attend in (ak.attend_sdpa, lambda *t, is_causal: fa._attend_fa4_padded(*t, is_causal)):
        out = attend(q, k, v, is_causal=causal)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
        results.append((out, dq, dk, dv))
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        assert (a - b).abs().max().item() < 1e-12, name
    assert widths == [32]


def test_sm90_backward_fix_rounds_head_dim_tiles_to_32(monkeypatch):
    """The fix of FA4's Hopper backward (flash-attention PR 2896) on a stand-in kernel class that
    rounds as flash-attn-4 4.0.0b36 does; once applied, head dims are no longer padded."""
    import math as m

    class FlashAttentionBackwardSm90:
        def __init__(self, dtype, head_dim, head_dim_v=None, qhead_per_kvhead=1, *,
                     SdP_swapAB=False, dKV_swapAB=False):
            hdim_multiple_of = 64 if dKV_swapAB else 16
            self.tile_hdim = int(m.ceil(head_dim / hdim_multiple_of) * hdim_multiple_of)
            head_dim_v = head_dim_v if head_dim_v is not None else head_dim
            self.tile_hdimv = int(m.ceil(head_dim_v / hdim_multiple_of) * hdim_multiple_of)
            self.check_hdim_oob = head_dim != self.tile_hdim
            self.check_hdim_v_oob = head_dim_v != self.tile_hdimv
            self.SdP_swapAB, self.dKV_swapAB = SdP_swapAB, dKV_swapAB
            self.shuffle_LSE = self.shuffle_dPsum = SdP_swapAB and self.tile_hdim <= 64

    fa4 = types.SimpleNamespace(FlashAttentionBackwardSm90=FlashAttentionBackwardSm90)
    monkeypatch.setattr(fa, "_fa4_head_dim_multiple", 32)
    fa._fix_sm90_backward_head_dim_rounding(fa4)
    assert fa._fa4_head_dim_multiple == 8
    fixed = fa4.FlashAttentionBackwardSm90("bf16", 80, None, 1, SdP_swapAB=True)
    assert (fixed.tile_hdim, fixed.tile_hdimv, fixed.check_hdim_oob) == (96, 96, True)
    assert fa4.FlashAttentionBackwardSm90("bf16", 128).check_hdim_oob is False
    swapped = fa4.FlashAttentionBackwardSm90("bf16", 144, 128, dKV_swapAB=True)
    assert (swapped.tile_hdim, swapped.tile_hdimv) == (192, 128)  # the swapped layout as it was
    fa._fix_sm90_backward_head_dim_rounding(fa4)  # idempotent
    assert fa4.FlashAttentionBackwardSm90.__mro__[1] is FlashAttentionBackwardSm90


def _fake_sm90_backward(tmp_path, kernel_line: str):
    """A stand-in FA4 module (a file, so that its source can be read): a kernel class whose
    __init__ has `kernel_line` (4.0.0b36's tile rounding or another), and a postprocess with
    4.0.0b36's parameters that records what it was called with."""
    path = tmp_path / "fake_fa4_sm90.py"
    path.write_text(f"""\
calls = []


class FlashAttentionBackwardSm90:
    def __init__(self, dtype, head_dim, dKV_swapAB=False):
        {kernel_line}
        self.tile_hdim = self.tile_hdimv = self.check_hdim_oob = self.check_hdim_v_oob = None
        self.dKV_swapAB = dKV_swapAB


def _bwd_postprocess_convert(accum, out, scale, cu_seqlens, seqused, arch, dtype, head_dim,
                             tile_m, num_threads, atom_layout, swap_ab, fake_mode=False,
                             hdim_multiple_of=32):
    calls.append((arch, hdim_multiple_of))
    return _bwd_postprocess_convert.compile_cache


_bwd_postprocess_convert.compile_cache = {{"key": "compiled"}}
""")
    spec = importlib.util.spec_from_file_location("fake_fa4_sm90", path)
    fa4 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fa4)
    return fa4, fa4.calls


def test_sm90_backward_read_back_fix_reads_dq_at_the_kernel_tile(tmp_path, monkeypatch):
    """The read-back fix: on Hopper, FA4's postprocess reads the accumulators back at the
    kernel's multiple of 16 instead of 32, whether it is passed by keyword or by position;
    64 (swapped dK/dV) and other GPUs are left alone; the kernel class is not touched; FA4's
    compile cache stays reachable through the wrapper; preferred over the round-up fix, once."""
    fa4, calls = _fake_sm90_backward(tmp_path, "hdim_multiple_of = 64 if dKV_swapAB else 16")
    kernel_cls, post = fa4.FlashAttentionBackwardSm90, fa4._bwd_postprocess_convert
    monkeypatch.setattr(fa, "_fa4_head_dim_multiple", 32)
    fa._fix_sm90_backward_head_dims(fa4)
    assert fa._fa4_head_dim_multiple == 8
    assert fa4.FlashAttentionBackwardSm90 is kernel_cls
    wrapper = fa4._bwd_postprocess_convert
    assert wrapper is not post and wrapper.__wrapped__ is post
    head = ("acc", "dq", 0.1, None, None)
    rest = ("bf16", 80, 64, 128, 1, False)
    assert wrapper(*head, 90, *rest, hdim_multiple_of=32) is post.compile_cache
    wrapper(*head, 90, *rest, False, 32)  # by position
    wrapper(*head, 90, *rest, hdim_multiple_of=64)  # swapped dK/dV
    wrapper(*head, 100, *rest, hdim_multiple_of=32)  # Blackwell tiles by 32
    wrapper(*head, arch=90, dtype="bf16", head_dim=80, tile_m=64, num_threads=128,
            atom_layout=1, swap_ab=False)  # the default 32, not passed: FA4 passes it
    assert calls == [(90, 16), (90, 16), (90, 64), (100, 32), (90, 32)]
    fa._fix_sm90_backward_head_dims(fa4)
    assert fa._fix_sm90_backward_dq_read_back(fa4) and fa4._bwd_postprocess_convert is wrapper


def test_sm90_backward_read_back_fix_needs_the_kernel_tiling_it_was_checked_on(tmp_path,
                                                                            monkeypatch):
    """A kernel that tiles otherwise (say by 32, flash-attention PR 2896 merged) keeps FA4's
    read-back: reading at 16 would then be the bug."""
    fa4, _ = _fake_sm90_backward(tmp_path, "hdim_multiple_of = 64 if dKV_swapAB else 32")
    post, kernel_cls = fa4._bwd_postprocess_convert, fa4.FlashAttentionBackwardSm90
    assert not fa._fix_sm90_backward_dq_read_back(fa4)
    assert fa4._bwd_postprocess_convert is post
    monkeypatch.setattr(fa, "_fa4_head_dim_multiple", 32)
    fa._fix_sm90_backward_head_dims(fa4)  # falls back to the round-up fix (a no-op by 32)
    assert fa4._bwd_postprocess_convert is post
    assert fa4.FlashAttentionBackwardSm90.__mro__[1] is kernel_cls
    assert fa._fa4_head_dim_multiple == 8


def test_fa4_ops_pass_opcheck(fake_fa4):
    q, k, v = _qkv(dtype=torch.float32)
    torch.library.opcheck(torch.ops.titan_mimo.fa4_forward.default, (q, k, v, True, 0.25))
    out, lse = torch.ops.titan_mimo.fa4_forward(q, k, v, True, 0.25)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.titan_mimo.fa4_backward.default,
                          (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), True,
                           0.25))


def test_fa4_ops_compile_as_opaque_calls(fake_fa4):
    q, k, v = _qkv(dtype=torch.float32)

    def block(q, k, v):
        return fa._attend_fa4_padded(q * 2, k, v, True).sin()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out = compiled(q, k, v)
    dq = torch.autograd.grad(out.sum(), q)[0]
    ref_out = block(q, k, v)
    assert (out - ref_out).abs().max().item() < 1e-6
    assert (dq - torch.autograd.grad(ref_out.sum(), q)[0]).abs().max().item() < 1e-6


def test_fa4_rejects_cpu_and_fp32(fake_fa4):
    q, k, v = _qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match="use attention_backend='sdpa'"):
        ak.attend_fa4(q, k, v, is_causal=True)


def test_missing_fa4_fails_at_build_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, fa._FA4_MODULE, None)  # import raises ImportError
    for model in ("vit/debug", "hybrid_lm/debug"):
        with pytest.raises(ImportError, match="pip install flash-attn-4"):
            build_model(model, attention_backend="fa4")


@pytest.mark.parametrize("args_cls", [ViTArgs, HybridLMArgs])
def test_unknown_backend_is_a_config_error(args_cls):
    with pytest.raises(ValueError, match=r"attention_backend='flash'.*\['sdpa', 'fa4', 'te'\]"):
        args_cls(attention_backend="flash")


class _FakeDotProductAttention(torch.nn.Module):
    """What titan_mimo needs of transformer_engine.pytorch.DotProductAttention, in plain
    PyTorch: its constructor's arguments (checked) and its output layout [B, S, H * E]."""

    built: typing.ClassVar[list[dict]] = []

    def __init__(self, num_attention_heads, kv_channels, num_gqa_groups=None, attention_dropout=0.0,
                 qkv_format="sbhd", attn_mask_type="causal", **rest):
        super().__init__()
        assert not rest, rest
        assert qkv_format == "bshd" and attention_dropout == 0.0
        assert attn_mask_type in ("causal", "no_mask")
        self.kwargs = {"num_attention_heads": num_attention_heads, "kv_channels": kv_channels,
                       "num_gqa_groups": num_gqa_groups, "attn_mask_type": attn_mask_type}
        _FakeDotProductAttention.built.append(self.kwargs)

    def forward(self, q, k, v):
        b, s, h, e = q.shape
        assert (h, k.shape[2], e) == (self.kwargs["num_attention_heads"],
                                      self.kwargs["num_gqa_groups"], self.kwargs["kv_channels"])
        qx, kx, vx = _expand(q, k, v)  # differentiable: autograd gives the gradients here
        p, _ = _probs(qx, kx, self.kwargs["attn_mask_type"] == "causal")
        return (p @ vx).transpose(1, 2).reshape(b, s, h * e).to(q.dtype)


@pytest.fixture
def fake_te(monkeypatch):
    module = types.ModuleType("transformer_engine.pytorch")
    module.DotProductAttention = _FakeDotProductAttention
    monkeypatch.setitem(sys.modules, ak._TE_MODULE, module)
    _FakeDotProductAttention.built.clear()
    ak._te_attention.cache_clear()
    yield _FakeDotProductAttention.built
    ak._te_attention.cache_clear()


@pytest.mark.parametrize("causal", [False, True])
def test_te_matches_sdpa_values_and_gradients(fake_te, causal):
    q, k, v = _qkv()  # 4 query heads on 2 kv heads
    grads = torch.randn(2, 9, 4, 8, dtype=torch.float64)
    results = []
    for attend in (ak.attend_sdpa, lambda *t, is_causal: ak._attend_te(*t, is_causal)):
        out = attend(q, k, v, is_causal=causal)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grads)))
    for got, want in zip(*results):
        assert got.shape == want.shape and (got - want).abs().max().item() < 1e-12
    assert fake_te == [{"num_attention_heads": 4, "kv_channels": 8, "num_gqa_groups": 2,
                        "attn_mask_type": "causal" if causal else "no_mask"}]


def test_te_modules_are_cached_outside_the_model(fake_te, monkeypatch):
    """One TE module per head layout, reused by every layer, and none in the model: parameters,
    FQNs and state dicts are those of the sdpa build."""
    # On CPU in fp32, past attend_te's CUDA/bf16 check (test_te_rejects_cpu_and_fp32).
    monkeypatch.setattr(ak, "attend_te", lambda q, k, v, *, is_causal: ak._attend_te(q, k, v, is_causal))
    lm = HybridLMArgs(dim=64, n_heads=4, n_kv_heads=2, head_dim=16, layer_pattern="**")
    models = {b: build_model("hybrid_lm/debug", attention_backend=b, dim=64, n_heads=4, n_kv_heads=2,
                             head_dim=16, layer_pattern="**") for b in ("sdpa", "te")}
    for m in models.values():
        init_model_for_testing(m, seed=0)
    assert models["te"].state_dict().keys() == models["sdpa"].state_dict().keys()
    tokens = torch.randint(0, lm.vocab_size, (2, 12))
    outs = {b: m(tokens) for b, m in models.items()}
    assert (outs["te"] - outs["sdpa"]).abs().max().item() < 1e-5
    assert fake_te == [{"num_attention_heads": 4, "kv_channels": 16, "num_gqa_groups": 2,
                        "attn_mask_type": "causal"}]  # two layers, one module
    vit = build_model("vit/debug", attention_backend="te")
    init_model_for_testing(vit, seed=0)
    vit(torch.randn(1, 3, 32, 32))
    assert fake_te[-1]["attn_mask_type"] == "no_mask"


def test_te_runs_outside_compiled_graphs(fake_te):
    """A compiled block splits around TE's call (torch.compiler.disable) and gives the eager
    values and gradients."""
    q, k, v = _qkv(dtype=torch.float32)

    def block(q, k, v):
        return ak._attend_te(q * 2, k, v, True).sin()

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(block, backend=backend)(q, k, v)
    dq = torch.autograd.grad(out.sum(), q)[0]
    ref_out = block(q, k, v)
    assert (out - ref_out).abs().max().item() < 1e-6
    assert (dq - torch.autograd.grad(ref_out.sum(), q)[0]).abs().max().item() < 1e-6
    # `q * 2` and `.sin()` compiled as two graphs; TE's call (its module included) in neither.
    assert len(graphs) == 2
    assert not any("DotProductAttention" in str(n.target) or "_attend_te" in str(n.target)
                   for g in graphs for n in g.graph.nodes)


def test_te_rejects_cpu_and_fp32(fake_te):
    q, k, v = _qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match="attention_backend='te' runs on CUDA.*use attention_backend='sdpa'"):
        ak.attend_te(q, k, v, is_causal=True)


@pytest.mark.parametrize("error", [None, OSError("libtransformer_engine.so: cannot open shared object file")])
def test_missing_te_fails_at_build_naming_the_package(monkeypatch, error):
    if error is None:
        monkeypatch.setitem(sys.modules, ak._TE_MODULE, None)  # import raises ImportError
    else:
        real = importlib.import_module

        def import_module(name, *a):
            if name == ak._TE_MODULE:
                raise error
            return real(name, *a)
        monkeypatch.setattr(ak.importlib, "import_module", import_module)
    for model in ("vit/debug", "hybrid_lm/debug"):
        with pytest.raises(ImportError, match=r"pip install transformer-engine\[pytorch\]"):
            build_model(model, attention_backend="te")


def _has_te() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        ak._import_te()
    except ImportError:
        return False
    return True


def _has_fa4() -> bool:
    return (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] in (9, 10)
            and importlib.util.find_spec("flash_attn") is not None)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn-4")
def test_fa4_is_the_checked_release():
    """flash_attn4.py calls FA4's private entry points and patches its Hopper backward as they are
    in FA4_CHECKED: another release is re-checked (the GPU tests here) before the constant moves."""
    import importlib.metadata

    version = importlib.metadata.version("flash-attn-4")
    assert version == fa.FA4_CHECKED, (
        f"flash-attn-4 {version} is installed but models/flash_attn4.py was checked on "
        f"{fa.FA4_CHECKED}: re-check its private calls and fixes, then update FA4_CHECKED")


@pytest.mark.skipif(not _has_fa4(), reason="needs a Hopper/Blackwell GPU and flash-attn-4")
@pytest.mark.parametrize("shape", [
    # (batch, seq, heads, kv heads, head dim, causal): the ViT-H head width (and a ragged
    # class-token length), the hybrid LM's GQA attention.
    (2, 1025, 4, 4, 80, False),
    (2, 1024, 4, 4, 80, False),
    (2, 1024, 4, 4, 72, True),
    (1, 1024, 4, 2, 80, False),  # GQA: dk and dv read back from fp32 accumulators too
    (1, 2048, 8, 2, 128, True),
])
def test_fa4_matches_sdpa_bf16(shape):
    """FA4 in bf16 is as close to an fp32 reference as SDPA in bf16 is (FlashAttention's own
    test criterion: at most twice SDPA's error, plus a small absolute slack)."""
    _assert_bf16_as_close_as_sdpa("fa4", shape)
    # The fix of FA4's Hopper backward was applied to the installed version: no padding.
    assert fa._fa4_head_dim_multiple == 8


def _assert_bf16_as_close_as_sdpa(backend: str, shape: tuple) -> None:
    """`backend`'s output and q/k/v gradients in bf16 against an fp32 SDPA reference: at most
    twice SDPA-in-bf16's relative error, plus 1e-3."""
    b, s, h, kv, e, causal = shape
    q32, k32, v32 = (t.detach().cuda() for t in _qkv(b, s, h, kv, e, dtype=torch.float32))
    grad32 = torch.randn(b, s, h, e, device="cuda")
    results = {}
    for name, attend, dtype in (("fp32", ak.attend_sdpa, torch.float32),
                                ("sdpa", ak.attend_sdpa, torch.bfloat16),
                                (backend, ak.attention_function(backend), torch.bfloat16)):
        q, k, v = (t.to(dtype).requires_grad_() for t in (q32, k32, v32))
        out = attend(q, k, v, is_causal=causal)
        results[name] = (out, *torch.autograd.grad(out, (q, k, v), grad32.to(dtype)))
    for i, what in enumerate(("out", "dq", "dk", "dv")):
        sdpa_err, err = (_rel(results[n][i], results["fp32"][i]) for n in ("sdpa", backend))
        assert err <= 2 * sdpa_err + 1e-3, (
            f"{what}: {backend} relative error {err:.3g} vs SDPA's {sdpa_err:.3g} (bf16 against fp32)")


@pytest.mark.skipif(not _has_fa4(), reason="needs a Hopper/Blackwell GPU and flash-attn-4")
def test_fa4_attention_blocks_match_sdpa_bf16():
    assert _lm_attention_block_rel("fa4", compile_block=False) < 1e-2
    images = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.bfloat16)
    feats = []
    for backend in ("sdpa", "fa4"):
        vit = build_model("vit/debug", attention_backend=backend, dim=160, n_heads=2)
        init_model_for_testing(vit, seed=0)
        feats.append(vit.cuda().bfloat16()(images))
    assert _rel(feats[1], feats[0]) < 2e-2


@pytest.mark.skipif(not _has_te(), reason="needs an NVIDIA GPU and transformer-engine[pytorch]")
@pytest.mark.parametrize("shape", [
    (2, 1025, 4, 4, 80, False),  # the ViT-H head width, with a class token
    (2, 1024, 4, 4, 72, True),
    (1, 2048, 8, 2, 128, True),  # the hybrid LM's GQA attention
])
def test_te_matches_sdpa_bf16(shape):
    """TE's attention in bf16 is as close to an fp32 reference as SDPA in bf16 (the FA4 test's
    criterion)."""
    _assert_bf16_as_close_as_sdpa("te", shape)


@pytest.mark.skipif(not _has_te(), reason="needs an NVIDIA GPU and transformer-engine[pytorch]")
def test_te_attention_blocks_match_sdpa_bf16_compiled():
    assert _lm_attention_block_rel("te", compile_block=True) < 1e-2


def _lm_attention_block_rel(backend: str, compile_block: bool) -> float:
    """Relative difference of one bf16 GQA attention block (LM) on `backend` from the same block
    on SDPA, same weights and input."""
    lm = HybridLMArgs(dim=256, n_heads=4, n_kv_heads=2, head_dim=64, layer_pattern="*")
    x = torch.randn(2, 512, 256, device="cuda", dtype=torch.bfloat16)
    outs = []
    for name in ("sdpa", backend):
        attn = Attention(dataclasses.replace(lm, attention_backend=name))
        init_model_for_testing(attn, seed=0)
        attn = attn.cuda().bfloat16()
        outs.append((torch.compile(attn) if compile_block else attn)(x))
    return _rel(outs[1], outs[0])
