"""Which blocks get activation checkpointing, for full and selective AC, whole and pipelined."""

import pytest
from torch import nn
from torch.distributed._composable import checkpoint

from titan_mimo.build import apply_block_options, checkpointed_layers, stage_layers

PATTERN = "M-M-M*-M-"  # 0 M, 1 -, 2 M, 3 -, 4 M, 5 *, 6 -, 7 M, 8 -


@pytest.mark.parametrize("mode, kinds, every, expected", [
    ("none", "", 1, set()),
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
    with pytest.raises(ValueError, match="not one of 'none', 'full', 'selective'"):
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

