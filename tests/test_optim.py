"""titan_mimo/optim.py: LocalShardAdamW steps DTensor parameters on their local shards with the
numbers of torch.optim.AdamW, in one 4-process gloo run (FSDP, TP with a replicated weight,
FSDP x TP) and one 2-process run."""

import json

import pytest
from launcher import REPO, torchrun

WORKER = REPO / "tests" / "workers" / "optim_worker.py"


@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks", "4ranks"])
def results(request, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("optim") / "out.json"
    torchrun(request.param, WORKER, str(out))
    return json.loads(out.read_text())


def test_local_shard_step_matches_dtensor_step(results):
    for layout, r in results.items():
        assert r["max_param_diff"] == 0.0, (layout, r)
        assert r["params_moved"] > 1e-3, (layout, r)  # the three steps did change the weights


def test_local_shard_step_skips_dtensor_dispatch(results):
    for layout, r in results.items():
        if layout.endswith("_misplaced_grad"):
            continue
        assert min(r["ref_dtensor_calls"]) > 0, (layout, r)  # stock AdamW goes through DTensor
        assert r["dtensor_calls"] == [0, 0, 0], (layout, r)


def test_misplaced_gradient_falls_back_to_dtensor(results):
    r = results["fsdp_misplaced_grad"]
    assert r["max_param_diff"] == 0.0 and min(r["dtensor_calls"]) > 0, r


def test_state_stays_dtensor(results):
    # state_dict / DCP see DTensor moments, as with torch.optim.AdamW.
    for layout, r in results.items():
        assert r["state_types"] == ["DTensor"], (layout, r)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_fused_local_shard_step_matches_dtensor_step_on_cuda(tmp_path):
    # One GPU: FSDP and TP over a 1-rank mesh, fused AdamW (the trainer's kernel on GPUs).
    out = tmp_path / "out.json"
    torchrun(1, WORKER, str(out), "cuda")
    for layout, r in json.loads(out.read_text()).items():
        assert r["max_param_diff"] == 0.0, (layout, r)
        if not layout.endswith("_misplaced_grad"):
            assert r["dtensor_calls"] == [0, 0, 0] and min(r["ref_dtensor_calls"]) > 0, (layout, r)
