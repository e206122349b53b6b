"""The Mamba2 mixer's Triton kernels, `mamba_kernels = "triton"` (models/language/conv_triton.py,
the causal conv + SiLU, and gated_norm_triton.py, the gated RMSNorm), against their
PyTorch references on CPU under Triton's interpreter (tests/workers/mamba_kernels_worker.py: each
op, and a Mamba2 mixer on both kernels, eager and compiled, against the same mixer on "torch"),
and in bf16 on a GPU; the config checks everywhere."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from titan_mimo.models.common import init_model_for_testing
from titan_mimo.models.language.args import HybridLMArgs
from titan_mimo.models.language.mamba2 import Mamba2Mixer

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "workers" / "mamba_kernels_worker.py"
HAS_TRITON = importlib.util.find_spec("triton") is not None
_OLD_INTERPRETER = "only 0-dimensional arrays can be converted to Python scalars"
"""numpy's refusal inside Triton 3.6's interpreter (as in test_ssd_mamba_ssm.py)."""


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("conv") / "out.pt"
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(WORKER), str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    if proc.returncode != 0 and _OLD_INTERPRETER in proc.stderr:
        import triton
        pytest.skip(f"Triton {triton.__version__}'s interpreter takes int() of one-element arrays, which "
                    "numpy >= 2.4 refuses (Triton 3.9 does not); the GPU test covers the compiled kernels")
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return torch.load(out)


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (its interpreter)")
@pytest.mark.parametrize("prefix, n_cases, names", [
    ("op_", 6, ("y", "dx", "dw", "db")),  # the conv op against F.conv1d (+ SiLU)
    ("norm_", 3, ("out", "dy", "dz", "dw")),  # the norm op against GatedRMSNorm
])
def test_op_equals_its_pytorch_reference_forward_and_backward(results, prefix, n_cases, names):
    cases = [k for k in results if k.startswith(prefix)]
    assert len(cases) == n_cases
    for case in cases:
        ref, ours = results[case]["ref"], results[case]["triton"]
        for name in names:
            assert _rel(ours[name], ref[name]) < 1e-6, (case, name, _rel(ours[name], ref[name]))


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (its interpreter)")
@pytest.mark.parametrize("case", ["mixer_eager", "mixer_compiled"])
def test_mixer_on_triton_kernels_equals_mixer_on_torch(results, case):
    torch_run, triton_run = results[case]["torch"], results[case]["triton"]
    assert set(torch_run) == set(triton_run) and "conv_x.weight" in torch_run
    for name in torch_run:
        assert _rel(triton_run[name], torch_run[name]) < 1e-5, (case, name, _rel(triton_run[name], torch_run[name]))


def test_args_refuse_an_unknown_kernel_and_another_width():
    with pytest.raises(ValueError, match="mamba_kernels='cuda' is unknown"):
        HybridLMArgs(mamba_kernels="cuda")
    with pytest.raises(ValueError, match="takes mamba_d_conv = 4"):
        HybridLMArgs(mamba_kernels="triton", mamba_d_conv=3)
    HybridLMArgs(mamba_kernels="triton", mamba_d_conv=3, layer_pattern="*-")  # no Mamba2 layer


@pytest.mark.skipif(not HAS_TRITON or os.environ.get("TRITON_INTERPRET") == "1", reason="needs Triton")
def test_ops_refuse_cpu_tensors_outside_the_interpreter():
    args = HybridLMArgs(layer_pattern="M", mamba_kernels="triton")
    mixer = Mamba2Mixer(args)
    with pytest.raises(ValueError, match="mamba_kernels='triton' runs on CUDA tensors"):
        mixer(torch.randn(1, 8, args.dim))  # the conv comes first
    y = torch.randn(1, 8, 16)
    with pytest.raises(ValueError, match="mamba_kernels='triton' runs on CUDA tensors"):
        mixer.norm_kernel(y, y, torch.ones(16), 2, 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_mixer_on_triton_kernels_matches_torch_on_gpu():
    """hybrid_2b's mixer width at 2 x 1000 tokens, bf16 weights and input, compiled with mamba-ssm's
    scan where it is installed (Inductor cannot compile the torch scan's cumsum on CUDA with torch
    2.11), else eager: the Triton kernels compute in float32 and round once, so they agree with
    the torch ones to bf16 round-off (passed on an H200 with both kernels)."""
    compiled = importlib.util.find_spec("mamba_ssm") is not None
    u = torch.randn(2, 1000, 2048, device="cuda", dtype=torch.bfloat16)
    runs = {}
    for kernels in ("torch", "triton"):
        args = HybridLMArgs(dim=2048, mamba_n_heads=64, mamba_head_dim=64, mamba_d_state=128, mamba_n_groups=8,
                            mamba_chunk_size=256, mamba_kernels=kernels, layer_pattern="M",
                            ssd_backend="mamba_ssm" if compiled else "torch")
        mixer = Mamba2Mixer(args)
        init_model_for_testing(mixer, 0)
        mixer = mixer.cuda().bfloat16()
        u_ = u.clone().requires_grad_()
        y = (torch.compile(mixer) if compiled else mixer)(u_)
        y.float().square().mean().backward()
        runs[kernels] = {"y": y.detach(), "du": u_.grad, **{n: p.grad for n, p in mixer.named_parameters()}}
    for name, ref in runs["torch"].items():
        assert _rel(runs["triton"][name], ref) < 2e-2, (name, _rel(runs["triton"][name], ref))
