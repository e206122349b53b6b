"""Optional SSD kernels: a clear error when mamba-ssm is missing; on a GPU with mamba-ssm, its
Triton scan matches the pure-PyTorch reference within bf16 tolerance (values and gradients)."""

import dataclasses
import importlib.util

import pytest
import torch

from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language import ssd_kernels
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language.mamba2 import Mamba2Mixer
from titan_mimo.models.language.ssd import ssd_chunked

ARGS = HybridLMArgs(dim=256, mamba_n_heads=8, mamba_head_dim=64, mamba_d_state=64,
                    mamba_n_groups=2, mamba_chunk_size=64)


def test_missing_mamba_ssm_names_the_gpu_extra(monkeypatch):
    monkeypatch.setattr(ssd_kernels.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"titan_mimo\[gpu\]"):
        Mamba2Mixer(dataclasses.replace(ARGS, ssd_backend="mamba_ssm"))


def test_torch_backend_is_the_reference():
    assert ssd_kernels.ssd_function("torch") is ssd_chunked


def _has_mamba_ssm() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


@pytest.mark.skipif(not _has_mamba_ssm(), reason="needs CUDA and mamba-ssm (the gpu extra)")
def test_mamba_ssm_matches_torch_reference_bf16():
    torch.manual_seed(0)
    ref = Mamba2Mixer(ARGS)
    init_model_for_testing(ref, seed=0)
    fast = Mamba2Mixer(dataclasses.replace(ARGS, ssd_backend="mamba_ssm"))
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.cuda().bfloat16(), fast.cuda().bfloat16()
    # 1000 is not a multiple of the chunk: both paths must handle the ragged last chunk.
    u = torch.randn(2, 1000, ARGS.dim, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(u)
    outs = []
    for mixer in (ref, fast):
        u_ = u.clone().requires_grad_()
        y = mixer(u_)
        y.backward(grad)
        outs.append((y.float(), u_.grad.float(), mixer.A_log.grad.float(), mixer.in_proj_B.weight.grad.float()))
    for name, a, b in zip(("y", "du", "dA_log", "dW_B"), *outs):
        rel = ((a - b).norm() / a.norm()).item()
        assert rel < 2e-2, f"{name}: relative error {rel:.3g} between torch and mamba_ssm scans"


@pytest.fixture
def reference_kernels(monkeypatch):
    """The custom ops' plumbing on CPU: mamba-ssm's forward/backward replaced by the reference
    scan and its autograd gradient, with mamba-ssm's return conventions."""

    def fwd(x, dt, A, B, C, chunk_size, D=None):
        return ssd_chunked(x, dt, A, B, C, chunk_size, D), None, dt, None, None, None

    def bwd(dy, x, dt, A, B, C, y, chunk_size, D=None):
        # torch.func.vjp: plain autograd is off inside a custom op's implementation.
        _, vjp = torch.func.vjp(lambda *t: ssd_chunked(*t[:5], chunk_size, t[5]), x, dt, A, B, C, D)
        return (*vjp(dy), None, None, None)

    monkeypatch.setattr(ssd_kernels, "_KERNELS", {"fwd": fwd, "bwd": bwd})


def _scan_inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    b, s, h, p, grp, n = 2, 48, 4, 8, 2, 8
    x = torch.randn(b, s, h, p, generator=g, dtype=dtype)
    dt = torch.rand(b, s, h, generator=g, dtype=dtype) * 0.5 + 0.01
    A = -torch.rand(h, generator=g, dtype=dtype) - 0.5
    B = torch.randn(b, s, grp, n, generator=g, dtype=dtype)
    C = torch.randn(b, s, grp, n, generator=g, dtype=dtype)
    D = torch.randn(h, generator=g, dtype=dtype)
    return x, dt, A, B, C, D


def test_scan_op_passes_opcheck(reference_kernels):
    # Schema, fake (meta) implementation, autograd registration and AOT dispatch.
    torch.library.opcheck(ssd_kernels.ssd_scan, (*(t.requires_grad_() for t in _scan_inputs()), 16))


def test_scan_op_compiles_in_one_graph_with_reference_values(reference_kernels):
    inputs = _scan_inputs()

    def block(x, dt, A, B, C, D):
        # Work on both sides of the scan, as in a Mamba2 block.
        y = ssd_kernels.ssd_scan(torch.nn.functional.silu(x), dt * 2, A, B, C, D, 16)
        return (y * y).sum()

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in inputs]
        loss = fn(*leaves)
        return loss, torch.autograd.grad(loss, leaves)

    def reference(x, dt, A, B, C, D):
        y = ssd_chunked(torch.nn.functional.silu(x), dt * 2, A, B, C, 16, D)
        return (y * y).sum()

    ref_loss, ref_grads = grads(reference)
    eager_loss, eager_grads = grads(block)
    compiled_loss, compiled_grads = grads(torch.compile(block, fullgraph=True, backend="aot_eager"))
    for loss, gs in ((eager_loss, eager_grads), (compiled_loss, compiled_grads)):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        for a, b in zip(gs, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not _has_mamba_ssm(), reason="needs CUDA and mamba-ssm (the gpu extra)")
def test_mamba_ssm_mixer_compiles_in_one_graph():
    # The scan is a custom op, so the compiled mixer has no graph break around it.
    torch.manual_seed(0)
    mixer = Mamba2Mixer(dataclasses.replace(ARGS, ssd_backend="mamba_ssm"))
    init_model_for_testing(mixer, seed=0)
    mixer = mixer.cuda().bfloat16()
    compiled = torch.compile(mixer, fullgraph=True)
    u = torch.randn(2, 1000, ARGS.dim, device="cuda", dtype=torch.bfloat16)
    outs = []
    for fn in (mixer, compiled):
        u_ = u.clone().requires_grad_()
        y = fn(u_)
        y.float().square().sum().backward()
        outs.append((y.float(), u_.grad.float()))
        mixer.zero_grad()
    for name, a, b in zip(("y", "du"), *outs):
        rel = ((a - b).norm() / a.norm()).item()
        assert rel < 2e-2, f"{name}: relative error {rel:.3g} between eager and compiled mixers"
