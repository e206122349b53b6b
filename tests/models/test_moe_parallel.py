"""models/language/moe_parallel.py: the regrouping of rows an expert-parallel rank receives (the
all-to-all dispatch itself is checked end to end by the MoE layouts of test_layout_invariance)."""

import torch

from titan_mimo.models.language.moe_parallel import regroup_index


def test_regroup_index_orders_received_rows_by_local_expert_then_source():
    # 3 source ranks x 2 local experts; rows arrive grouped by (source, expert), some groups empty.
    counts_PL = torch.tensor([[2, 1], [0, 3], [1, 0]])
    labels = [(p, e) for p in range(3) for e in range(2) for _ in range(int(counts_PL[p, e]))]
    index = regroup_index(counts_PL, total=len(labels))
    regrouped = [labels[i] for i in index.tolist()]
    assert regrouped == sorted(labels, key=lambda pe: (pe[1], pe[0]))
    assert sorted(index.tolist()) == list(range(len(labels)))


def test_regroup_index_of_nothing_received():
    assert regroup_index(torch.zeros(2, 4, dtype=torch.int64), total=0).numel() == 0
