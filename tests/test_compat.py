"""titan_mimo/compat.py: the private torch APIs it uses are those of a checked torch release and
still have the shape it relies on; LocalShardAdamW steps DTensor parameters on their local
shards with the numbers of torch.optim.AdamW, in one 4-process gloo run (FSDP, TP with a
replicated weight, FSDP x TP) and one 2-process run."""

import inspect
import json

import pytest
import torch
from launcher import REPO, torchrun

from titan_mimo import compat

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


# ---- the private APIs, on the installed torch -----------------------------------------------


def test_installed_torch_is_a_checked_release():
    release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    assert release in compat.TORCH_CHECKED, (
        f"torch {torch.__version__} is installed but titan_mimo/compat.py was checked on "
        f"{compat.TORCH_CHECKED}: re-check each private API it uses (this file's tests name them), "
        "then add the release to TORCH_CHECKED")


def test_private_apis_have_the_shape_compat_relies_on():
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch.distributed.pipelining import PipelineStage

    assert isinstance(functorch_config.activation_memory_budget, float)
    assert isinstance(inductor_config.coordinate_descent_tuning, bool)
    assert isinstance(inductor_config.emulate_precision_casts, bool)
    with inductor_config.patch(emulate_precision_casts=False):
        compat.emulate_precision_casts()
        assert inductor_config.emulate_precision_casts is True
    assert callable(torch._foreach_mul_) and callable(torch._assert_async)
    # The stage work the schedules call (time_stage_work); at least forward and backward exist.
    assert {"forward_one_chunk", "backward_one_chunk"} <= set(dir(PipelineStage))
    assert any(hasattr(PipelineStage, name) for name in compat._STAGE_WORK[2:])
    # time_stage_work reads the micro-batch of each *_one_chunk call from its first argument.
    for name, chunk_arg in (("forward_one_chunk", "fwd_chunk_id"), ("backward_one_chunk", "bwd_chunk_id"),
                            ("backward_weight_one_chunk", "bwd_chunk_id")):
        if hasattr(PipelineStage, name):
            params = list(inspect.signature(getattr(PipelineStage, name)).parameters)
            assert params[1] == chunk_arg, (name, params)
    # AdamW's step collects each group's tensors through _init_group(group, params, grads,
    # state lists...) and returns has_complex: what LocalShardAdamW swaps for local tensors.
    params = list(inspect.signature(torch.optim.AdamW._init_group).parameters)
    assert params[:4] == ["self", "group", "params_with_grad", "grads"], params


def test_first_stage_forwards_ahead_reads_the_action_list():
    from torch.distributed.pipelining.schedules import _Action, _ComputationType

    F, B = _ComputationType.FORWARD, _ComputationType.FULL_BACKWARD

    class Schedule:  # stage 0 of rank 0 runs F0 F1 F2 B0 F3 B1 B2 B3, another stage's actions between
        pipeline_order = {0: [_Action(0, F, 0), _Action(0, F, 1), None, _Action(2, F, 0), _Action(0, F, 2),
                              _Action(0, B, 0), _Action(0, F, 3), _Action(0, B, 1), _Action(0, B, 2),
                              _Action(0, B, 3)]}

    assert compat.first_stage_forwards_ahead(Schedule()) == 3
    assert compat.first_stage_forwards_ahead(object()) is None  # single-stage schedules


def test_time_stage_work_spans_each_outermost_call_with_its_micro_batch():
    from contextlib import contextmanager

    seen = []

    class Stage:
        def forward_one_chunk(self, fwd_chunk_id, args, kwargs=None):
            return self.perform_reduce_grad(1)  # an inner call: inside the outer span only

        def backward_one_chunk(self, bwd_chunk_id, loss=None, full_backward=True, last_backward=False):
            return bwd_chunk_id

        def perform_reduce_grad(self, grad_scale_factor):
            return "reduced"

    @contextmanager
    def span(work, mb):
        seen.append((work, mb))
        yield

    stage = Stage()
    compat.time_stage_work(stage, span)
    assert stage.forward_one_chunk(3, ()) == "reduced"
    assert stage.backward_one_chunk(bwd_chunk_id=2) == 2
    assert stage.perform_reduce_grad(1) == "reduced"
    assert seen == [("forward_one_chunk", 3), ("backward_one_chunk", 2), ("perform_reduce_grad", None)]
