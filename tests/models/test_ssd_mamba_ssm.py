"""Our backward around mamba-ssm's Triton SSD kernels (`ssd_mamba_ssm`), on CPU.

One process (tests/workers/ssd_interpreter_worker.py) runs mamba-ssm's real kernels and wrappers
on CPU tensors under Triton's interpreter, for our scan, mamba-ssm's own
`mamba_chunk_scan_combined` and the pure-PyTorch reference `ssd_chunked`. Needs mamba-ssm's
source: a mamba_ssm package on the path, or build/mamba_ssm_src as `bash tests/fetch_mamba_ssm.sh`
(run by .ci/run) leaves it. The compiled kernels are covered by the GPU test in
test_ssd_kernels.py, bf16 too (the interpreter's bf16 is not meaningful).
"""

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

SOURCE = REPO / "build" / "mamba_ssm_src"
WORKER = REPO / "tests" / "workers" / "ssd_interpreter_worker.py"
NAMES = ("y", "dx", "ddt", "dA", "dB", "dC", "dD")

pytestmark = pytest.mark.skipif(
    not (SOURCE / "mamba_ssm").is_dir() and importlib.util.find_spec("mamba_ssm") is None,
    reason="needs mamba-ssm's source: run `bash tests/fetch_mamba_ssm.sh` (.ci/run does)")


_OLD_INTERPRETER = "only 0-dimensional arrays can be converted to Python scalars"
"""numpy's refusal, raised inside Triton's interpreter (`int(self.handle.data)` on a loop bound)."""


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ssd") / "out.pt"
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(WORKER), str(out), str(SOURCE)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 and _OLD_INTERPRETER in proc.stderr:
        import triton
        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run mamba-ssm's loops with this "
                    f"numpy: it takes int() of a one-element array, which numpy >= 2.4 refuses "
                    f"(seen with Triton 3.6 and numpy 2.5; Triton 3.9 squeezes first). The compiled "
                    f"kernels' GPU test (test_ssd_kernels.py) is unaffected")
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return torch.load(out)


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def test_mamba_ssm_is_the_checked_release():
    """ssd_mamba_ssm reaches into mamba-ssm's private functions and kernels as they are in
    MAMBA_SSM_CHECKED: another release is re-checked (this file's tests, and the GPU ones) before
    the constant moves."""
    from titan_mimo.models.language.ssd_mamba_ssm import MAMBA_SSM_CHECKED

    init = SOURCE / "mamba_ssm" / "__init__.py"
    if init.is_file():
        version = re.search(r'__version__ = "([^"]+)"', init.read_text()).group(1)
    else:
        version = importlib.metadata.version("mamba-ssm")
    assert re.fullmatch(rf"{re.escape(MAMBA_SSM_CHECKED)}(\.post\d+)?", version), (
        f"mamba-ssm {version} is installed but models/language/ssd_mamba_ssm.py was checked on "
        f"{MAMBA_SSM_CHECKED}: re-check its private functions and kernels, then update MAMBA_SSM_CHECKED")


def test_kernels_take_the_arguments_we_pass(results):
    assert results["check"] is None
    assert not results["ours_is_stock"]


@pytest.mark.parametrize("case", ["fp32_split1", "fp32_splits", "deterministic"])
def test_fp32_equals_mamba_ssm_and_matches_reference(results, case):
    """In fp32 the states the forward saves are the ones mamba-ssm's backward recomputes, and a
    split of one taken as a view equals the sum over it: the same numbers as mamba-ssm's own
    backward, with several splits and in deterministic mode too."""
    r = results[case]
    for variant in ("keep", "recompute"):
        for name, ours, stock, ref in zip(NAMES, r[variant], r["stock"], r["ref"]):
            torch.testing.assert_close(ours, stock, rtol=1e-6, atol=1e-6,
                                       msg=f"{variant} {name} vs mamba-ssm")
            assert _rel(ours, ref) < 1e-4, f"{variant} {name}: {_rel(ours, ref):.3g} vs reference"


def test_backward_does_not_recompute_the_forward(results):
    """mamba-ssm's backward calls the forward's cumsum, chunk-state and state-passing helpers
    again; ours with keep_states calls them once, in the forward, and without it recomputes the
    states but not the cumsum (all recompute CB = C·Bᵀ: fp32, 4·chunk bytes per token and group,
    not worth keeping)."""
    once = {"_chunk_cumsum_fwd": 1, "_chunk_state_fwd": 1, "_state_passing_fwd": 1}
    assert results["calls_stock"] == {k: 2 for k in once}
    assert results["calls_keep"] == once
    assert results["calls_recompute"] == {**once, "_chunk_state_fwd": 2, "_state_passing_fwd": 2}


def test_no_sum_over_a_split_of_one(results):
    """dB, dC and dCB each come out of mamba-ssm's wrappers through a `.sum(2)` over the head
    split, a full fp32 copy when the split is 1; ours takes the view (the other sums remain)."""
    assert results["sums_stock"] - results["sums_keep"] == 3
    assert results["sums_stock"] - results["sums_recompute"] == 3


def test_custom_ops_pass_opcheck(results):
    """torch.library.opcheck on both ops (keep_states on and off, and without D): schema, fake
    tensors against the real outputs' shapes, dtypes and strides, autograd registration."""
    assert results["opcheck"]
    # Called without D, every input but D gets a gradient.
    assert all(results["no_D_grads"])


def test_one_graph_under_compile(results):
    """torch.compile(fullgraph=True) through the scan (a graph break would raise in the worker),
    with the same values and gradients as eager."""
    for name, compiled, eager in zip(NAMES, results["compiled"], results["eager"]):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6, msg=name)


def test_ops_set_up_their_kernels_on_first_use(results):
    assert results["lazy_setup"]


def test_changed_kernel_signature_falls_back_to_mamba_ssm(results):
    assert results["fallback_is_stock"]
    assert any("new_arg" in m and "recomputes" in m for m in results["fallback_log"])
    assert "do not match" in results["ops_after_fallback"]
