"""Optional SSD kernels: a clear error when mamba-ssm is missing; on a GPU with mamba-ssm, its
Triton scan matches the pure-PyTorch reference within bf16 tolerance (values and gradients)."""

import dataclasses
import importlib.util

import pytest
import torch

from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language import ssd_kernels, ssd_mamba_ssm
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language.mamba2 import Mamba2Mixer
from titan_mimo.models.language.ssd import ssd_chunked

ARGS = HybridLMArgs(dim=256, mamba_n_heads=8, mamba_head_dim=64, mamba_d_state=64,
                    mamba_n_groups=2, mamba_chunk_size=64)


def test_missing_mamba_ssm_names_the_gpu_extra(monkeypatch):
    monkeypatch.setattr(ssd_mamba_ssm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"titan_mimo\[gpu\]"):
        Mamba2Mixer(dataclasses.replace(ARGS, ssd_backend="mamba_ssm"))


def test_torch_backend_is_the_reference():
    assert ssd_kernels.ssd_function("torch") is ssd_chunked


def _has_mamba_ssm() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


def _reference_and_mamba_ssm(**fast_args) -> tuple[Mamba2Mixer, Mamba2Mixer, torch.Tensor, torch.Tensor]:
    """The torch-scan mixer and a mamba_ssm one (`fast_args` on top) with the same weights, in
    bf16 on the GPU, and an input and output gradient: 1000 tokens is not a multiple of the
    chunk, so both paths must handle the ragged last chunk."""
    torch.manual_seed(0)
    ref = Mamba2Mixer(ARGS)
    init_model_for_testing(ref, seed=0)
    fast = Mamba2Mixer(dataclasses.replace(ARGS, ssd_backend="mamba_ssm", **fast_args))
    fast.load_state_dict(ref.state_dict())
    u = torch.randn(2, 1000, ARGS.dim, device="cuda", dtype=torch.bfloat16)
    return ref.cuda().bfloat16(), fast.cuda().bfloat16(), u, torch.randn_like(u)


def _fwd_bwd(mixer, u, grad) -> list[torch.Tensor]:
    """y, du, dA_log and the B projection's weight gradient of one forward and backward."""
    mixer.zero_grad()
    u_ = u.clone().requires_grad_()
    y = mixer(u_)
    y.backward(grad)
    return [y.float(), u_.grad.float(), mixer.A_log.grad.float(), mixer.in_proj_B.weight.grad.float()]


def _assert_close_to_reference(ref_outs, outs, what: str) -> None:
    for name, a, b in zip(("y", "du", "dA_log", "dW_B"), ref_outs, outs):
        rel = ((a - b).norm() / a.norm()).item()
        assert rel < 2e-2, f"{name}: relative error {rel:.3g} between torch and {what}"


@pytest.mark.skipif(not _has_mamba_ssm(), reason="needs CUDA and mamba-ssm (the gpu extra)")
@pytest.mark.parametrize("keep_states,compiled", [(False, False), (True, False), (False, True)])
def test_mamba_ssm_matches_torch_reference_bf16(keep_states, compiled):
    ref, fast, u, grad = _reference_and_mamba_ssm(ssd_keep_states=keep_states)
    if compiled:
        # The scan's custom ops keep the mixer one graph: a graph break would raise here.
        fast.compile(fullgraph=True)
    _assert_close_to_reference(_fwd_bwd(ref, u, grad), _fwd_bwd(fast, u, grad), "mamba_ssm scans")
