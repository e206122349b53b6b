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
