"""Which blocks get activation checkpointing, for full and selective AC, whole and pipelined."""

import pytest
from torch import nn
from torch.distributed._composable import checkpoint

from titan_mimo.build import apply_block_options, checkpointed_layers, stage_layers

PATTERN = "M-M-M*-M-"  # 0 M, 1 -, 2 M, 3 -, 4 M, 5 *, 6 -, 7 M, 8 -


@pytest.mark.parametrize("mode, kinds, every, expected", [
    ("none", "", 1, set()),
    ("memory_budget", "", 1, set()),
    ("full", "", 1, set(range(9))),
    ("selective", "-", 1, {1, 3, 6, 8}),
    ("selective", "-", 2, {1, 6}),
    ("selective", "*-", 1, {1, 3, 5, 6, 8}),
    ("selective", "M", 3, {0, 7}),
    ("selective", "", 2, {0, 2, 4, 6, 8}),
])
def test_checkpointed_layers(mode, kinds, every, expected):
    assert checkpointed_layers(PATTERN, mode, kinds, every) == expected


def test_pipeline_stages_checkpoint_what_the_whole_model_would():
    whole = checkpointed_layers(PATTERN, "selective", "-", 2)
    per_stage = set()
    for layers in stage_layers(len(PATTERN), 3):
        blocks = {str(i): nn.Linear(2, 2) for i in layers}
        apply_block_options(blocks, whole, compile_blocks=False)
        per_stage |= {int(i) for i, b in blocks.items() if checkpoint.state(b) is not None}
    assert per_stage == whole == {1, 6}


def test_unknown_mode():
    with pytest.raises(ValueError, match="not one of 'none', 'full', 'selective', 'memory_budget'"):
        checkpointed_layers(PATTERN, "partial")


def test_init_on_device_draws_every_parameter_from_its_generator():
    """on_device=True on CPU is the host draw (same generator type): the values the trainer's
    default init_device = "device" gives on a CPU run are those of init_device = "cpu"."""
    import torch

    from titan_mimo.init import init_module_weights
    from titan_mimo.models import build_model
    a, b = build_model("hybrid_lm/debug"), build_model("hybrid_lm/debug")
    init_module_weights(a, 3, prefix="language")
    init_module_weights(b, 3, prefix="language", on_device=True)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_init_on_cuda_is_deterministic_and_follows_the_same_rules():
    import torch

    from titan_mimo.init import init_module_weights
    from titan_mimo.models import build_model
    cpu = build_model("hybrid_lm/debug")
    init_module_weights(cpu, 0, prefix="language")
    runs = []
    for _ in range(2):
        m = build_model("hybrid_lm/debug").cuda()
        init_module_weights(m, 0, prefix="language", on_device=True)
        runs.append(dict(m.named_parameters()))
    for name, p in cpu.named_parameters():
        g1, g2 = runs[0][name], runs[1][name]
        assert torch.equal(g1, g2), name  # same (seed, name) -> same values on every rank
        # Same rule: constants identical, random draws with the same spread.
        if p.numel() >= 256 and p.std() > 0:
            assert abs(g1.std().item() / p.std().item() - 1) < 0.2, name
        elif p.std() == 0:
            assert torch.equal(g1.cpu(), p), name


@pytest.mark.parametrize("setting, n_stages, frozen, encoder, expected", [
    ("default", 1, False, False, True), ("default", 2, False, False, False),
    ("always", 2, False, False, True), ("never", 1, False, False, False),
    ("never", 1, False, True, False),
    ("never", 1, True, True, True),  # a frozen encoder runs no backward to free them in
    ("default", 2, True, False, False),  # a frozen LM still runs its backward
])
def test_reshard_after_forward(setting, n_stages, frozen, encoder, expected):
    from titan_mimo.build import reshards_after_forward
    from titan_mimo.config import Module
    kind = {"model": "vit/debug", "feeds": "language", "placeholder_id": 1} if encoder else {"model": "hybrid_lm/debug"}
    mcfg = Module(**kind, reshard_after_forward=setting, frozen=frozen)
    assert reshards_after_forward(mcfg, n_stages) is expected



def test_memory_budget_is_set_around_each_forward_and_restored():
    import torch

    from titan_mimo.compat import scope_activation_memory_budget
    config = torch._functorch.config
    default = config.activation_memory_budget
    seen = []

    class Probe(nn.Module):
        def __init__(self, inner=None, fail=False):
            super().__init__()
            self.inner, self.fail = inner, fail

        def forward(self, x):
            seen.append(config.activation_memory_budget)
            if self.inner is not None:
                x = self.inner(x)
                seen.append(config.activation_memory_budget)
            if self.fail:
                raise RuntimeError("boom")
            return x

    inner = Probe()
    outer = Probe(inner)
    scope_activation_memory_budget(outer, 0.5)
    scope_activation_memory_budget(inner, 0.25)
    outer(torch.zeros(1))
    # Nested modules each see their own budget; the outer one's is back after the inner returns.
    assert seen == [0.5, 0.25, 0.5]
    assert config.activation_memory_budget == default
    failing = Probe(fail=True)
    scope_activation_memory_budget(failing, 0.75)
    with pytest.raises(RuntimeError, match="boom"):
        failing(torch.zeros(1))
    assert seen[-1] == 0.75 and config.activation_memory_budget == default


def _saved_activation_bytes(block, x):
    """Forward `block` on `x`; the bytes it keeps for its backward (storages, once each; not its
    parameters or `x`), the float32 shapes among them, and the output."""
    import torch

    from titan_mimo.profiling import saved_for_backward
    skip = {p.untyped_storage().data_ptr() for p in block.parameters()} | {x.untyped_storage().data_ptr()}
    y, kept = saved_for_backward(block, x)
    kept = {ptr: entry for ptr, entry in kept.items() if ptr not in skip}
    f32_shapes = {shape for _, dtype, shapes in kept.values() if dtype == torch.float32 for shape in shapes}
    return sum(n for n, _, _ in kept.values()), f32_shapes, y


def test_memory_budget_keeps_less_for_the_backward_with_the_same_numbers():
    """A compiled Mamba2 block and MLP block under a budget of 0.5 keep less for the backward
    (they recompute elementwise work) and give the same outputs and gradients. The compiler's
    partitioner is that of Inductor (`aot_eager_decomp_partition` runs it without code
    generation, so the recompute runs the same kernels in both runs)."""
    import copy

    import torch

    from titan_mimo.compat import scope_activation_memory_budget
    from titan_mimo.models import build_model
    from titan_mimo.models.common import init_model_for_testing
    model = build_model("hybrid_lm/debug", dim=64, mlp_hidden=256, mamba_n_heads=8, mamba_head_dim=16,
                        mamba_d_state=16, mamba_n_groups=2, mamba_chunk_size=16)
    init_model_for_testing(model, 0)
    pattern = model.args.layer_pattern
    x = torch.randn(2, 64, 64)
    for kind in "M-":
        block = model.layers[str(pattern.index(kind))]
        runs = {}
        for budget in (None, 0.5):
            # Dynamo would reuse the graph compiled for the other copy (same code, same guards):
            # the budget is read when a graph is compiled.
            torch._dynamo.reset()
            b = copy.deepcopy(block)
            if budget is not None:
                scope_activation_memory_budget(b, budget)
            b.compile(backend="aot_eager_decomp_partition")
            xi = x.clone().requires_grad_()
            kept, f32_shapes, y = _saved_activation_bytes(b, xi)
            y.square().sum().backward()
            runs[budget] = kept, f32_shapes, y.detach(), [xi.grad] + [p.grad for p in b.parameters()]
        (kept, _, y, grads), (kept_b, _, y_b, grads_b) = runs[None], runs[0.5]
        assert kept_b < 0.75 * kept, (kind, kept_b, kept)
        torch.testing.assert_close(y_b, y, rtol=0, atol=0)
        for g_b, g in zip(grads_b, grads):
            torch.testing.assert_close(g_b, g, rtol=1e-6, atol=1e-7)
    # In bf16 the depthwise conv pads its input before widening it: the compiled Mamba2 block
    # keeps no float32 padded copy ([B, S + K - 1, C]) of it.
    torch._dynamo.reset()
    block = copy.deepcopy(model.layers[str(pattern.index("M"))]).to(torch.bfloat16)
    block.compile(backend="aot_eager_decomp_partition")
    _, f32_shapes, _ = _saved_activation_bytes(block, x.to(torch.bfloat16).requires_grad_())
    k = model.args.mamba_d_conv
    assert f32_shapes and not any(len(s) == 3 and s[1] == x.shape[1] + k - 1 for s in f32_shapes), f32_shapes


def test_build_modules_scopes_the_budget_to_its_module(monkeypatch):
    """In a colocated world of one, the LM's blocks run under its budget and the ViT's under the
    default. (Compilation is stubbed out: the budget is read when a graph compiles, which the
    test above covers; here what matters is which budget each module's forward sees.)"""
    import torch
    import torch.distributed as dist

    from titan_mimo.build import build_modules, module_args
    from titan_mimo.config_loader import config_from_dict
    from titan_mimo.topology import build_topology, resolve_placements
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: None)
    cfg = config_from_dict({"modules": {
        "vision": {"model": "vit/debug", "ranks": 1, "feeds": "language", "placeholder_id": 1,
                   "compile": True},
        "language": {"model": "hybrid_lm/debug", "ranks": 1, "compile": True,
                     "activation_checkpoint": "memory_budget", "memory_budget": 0.25},
    }})
    args = module_args(cfg)
    placements = resolve_placements(cfg, 1, {n: a.tp_divisors() for n, a in args.items()})
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        built = build_modules(cfg, args, build_topology(cfg, placements, "cpu"), torch.device("cpu"))
        seen = {}
        for name, b in built.items():
            block = next(iter(b.parts[0].get_submodule(
                "encoder.layers" if name == "vision" else "layers").children()))
            block.register_forward_pre_hook(
                lambda mod, a, name=name: seen.update({name: torch._functorch.config.activation_memory_budget}))
        default = torch._functorch.config.activation_memory_budget
        lm = built["language"].parts[0]
        lm(torch.zeros(1, 8, dtype=torch.long))
        built["vision"].parts[0](torch.zeros(1, 3, 16, 16))
    finally:
        dist.destroy_process_group()
    assert seen == {"language": 0.25, "vision": default}
    assert torch._functorch.config.activation_memory_budget == default


def test_coordinate_descent_tuning_is_set_for_the_process_by_the_build(monkeypatch):
    """training.coordinate_descent_tuning turns Inductor's setting on in build_modules (for the
    whole process: backward graphs compile outside any module's forward); off, it is left as
    it was (so TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 still works)."""
    import torch
    import torch._inductor.config as inductor_config
    import torch.distributed as dist

    from titan_mimo.build import build_modules, module_args
    from titan_mimo.config_loader import config_from_dict
    from titan_mimo.topology import build_topology, resolve_placements
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: None)
    for tuning in (False, True):
        cfg = config_from_dict({"training": {"coordinate_descent_tuning": tuning}, "modules": {
            "vision": {"model": "vit/debug", "ranks": 1, "feeds": "language", "placeholder_id": 1},
            "language": {"model": "hybrid_lm/debug", "ranks": 1, "compile": True},
        }})
        args = module_args(cfg)
        placements = resolve_placements(cfg, 1, {n: a.tp_divisors() for n, a in args.items()})
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            with inductor_config.patch(coordinate_descent_tuning=False):
                build_modules(cfg, args, build_topology(cfg, placements, "cpu"), torch.device("cpu"))
                assert inductor_config.coordinate_descent_tuning is tuning
        finally:
            dist.destroy_process_group()


def test_one_rank_modules_run_unwrapped_under_autocast(monkeypatch):
    """On one rank (dp 1, tp 1, unpipelined) a module is not wrapped in FSDP: plain fp32
    parameters, its forward under autocast to training.mixed_precision (bf16 matmuls, fp32
    gradients); parallelism.fsdp_one_rank = true wraps it anyway (bf16 DTensor parameters in
    forward, as on several ranks)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from titan_mimo.build import build_modules, module_args
    from titan_mimo.config_loader import config_from_dict
    from titan_mimo.topology import build_topology, resolve_placements
    for fsdp_one_rank in (False, True):
        cfg = config_from_dict({"training": {"mixed_precision": "bf16"},
                                "parallelism": {"fsdp_one_rank": fsdp_one_rank}, "modules": {
            "vision": {"model": "vit/debug", "ranks": 1, "feeds": "language", "placeholder_id": 1},
            "language": {"model": "hybrid_lm/debug", "ranks": 1},
        }})
        args = module_args(cfg)
        placements = resolve_placements(cfg, 1, {n: a.tp_divisors() for n, a in args.items()})
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            built = build_modules(cfg, args, build_topology(cfg, placements, "cpu"), torch.device("cpu"))
            lm = built["language"].parts[0]
            seen = []
            lm.output.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, out.dtype)))
            lm(torch.zeros(1, 8, dtype=torch.long)).float().sum().backward()
        finally:
            dist.destroy_process_group()
        assert [b.sharded for b in built.values()] == [fsdp_one_rank] * 2
        params = [p for b in built.values() for p in b.parameters()]
        assert all(isinstance(p, DTensor) == fsdp_one_rank and p.dtype == torch.float32 for p in params)
        # Unwrapped: fp32 final-norm output, the head's matmul in bf16 under autocast; FSDP:
        # bf16 parameters, so bf16 all through.
        assert seen == [(torch.bfloat16 if fsdp_one_rank else torch.float32, torch.bfloat16)]
        assert lm.output.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("model, ep, message", [
    ("hybrid_lm/debug", 2, "ep = 2: the model 'hybrid_lm/debug' has no MoE blocks"),
    ("hybrid_lm/debug_moe", 3, "ep = 3 does not divide the model's n_routed_experts = 8"),
])
def test_module_args_checks_expert_parallelism_against_the_model(model, ep, message):
    from launcher import REPO
    from titan_mimo.build import module_args
    from titan_mimo.config_loader import load_config

    cfg = load_config(["--config", str(REPO / "train_configs/debug_cpu.toml"), f"--modules.language.model={model}",
                       f"--modules.language.ep={ep}"])
    with pytest.raises(ValueError, match=message):
        module_args(cfg)
