"""Per-role loading (titan_mimo/data/loader.py): the same sample stream whatever the placement,
encoder and language roles agreeing slot by slot (also with patch balancing), and exact resume of
the worker-process loader from its state."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from data_helpers import dataset

from titan_mimo.data.loader import Roles, StepLoader, balanced_order, load_roles
from titan_mimo.data.plan import SamplePlan

GLOBAL_BATCH, MBS = 8, 2
IMAGE = 1


def _step(ds, step: int, enc_dp: int, lm_dp: int, balance: bool = False):
    """Every rank's share of one step for a placement, in (dp rank, micro-batch) order."""
    plan = SamplePlan(global_batch_size=GLOBAL_BATCH, micro_batch_size=MBS * 2 // lm_dp, language_dp=lm_dp)
    balance_dp = enc_dp if balance else 0
    text = [load_roles(ds, plan, Roles(text=(lm_dp, r), balance_dp=balance_dp), step, "train")[0]
            for r in range(lm_dp)]
    images = [load_roles(ds, plan, Roles(images={"vision": (enc_dp, r)}, balance_dp=balance_dp), step, "train")[1]
              ["vision"] for r in range(enc_dp)]
    return plan, text, images


def _by_microbatch(per_rank: list[list]) -> list[list]:
    """[rank][mb] -> [mb][rank]."""
    return [list(x) for x in zip(*per_rank)]


@pytest.fixture(scope="module")
def mixed(sample_dir: Path):
    return dataset(sample_dir, ["captions.jsonl", "shards/chat-*.tar"], weights=[1.0, 1.0])


def test_same_stream_for_every_placement(mixed) -> None:
    """Language dp 1 or 2 (micro-batches of 4 samples either way, as mbs * lm_dp), encoder dp
    1, 2 or 4: the step's samples, their order, tokens and pixels are the same."""
    for step in range(2):
        _, ref_text, ref_images = _step(mixed, step, 1, 1)
        ref_tokens = torch.cat([b.tokens for b in ref_text[0]])
        ref_pixels = [im for b in ref_images[0] for im in b.images["vision"]]
        assert ref_tokens.shape == (GLOBAL_BATCH, 64)
        for enc_dp, lm_dp in [(2, 2), (2, 1), (1, 2), (4, 2), (4, 1)]:
            _, text, images = _step(mixed, step, enc_dp, lm_dp)
            tokens = torch.cat([b.tokens for mb in _by_microbatch(text) for b in mb])
            labels = torch.cat([b.labels for mb in _by_microbatch(text) for b in mb])
            pixels = [im for mb in _by_microbatch(images) for b in mb for im in b.images["vision"]]
            assert torch.equal(tokens, ref_tokens), (enc_dp, lm_dp)
            assert torch.equal(labels, torch.cat([b.labels for b in ref_text[0]]))
            assert len(pixels) == len(ref_pixels) and all(torch.equal(a, b) for a, b in zip(pixels, ref_pixels))
            # every encoder rank's samples carry exactly the image tokens its images produce
            for mb in _by_microbatch(images):
                for b in mb:
                    assert int((b.tokens == IMAGE).sum()) == sum(
                        (im.shape[1] // 8) * (im.shape[2] // 8) for im in b.images["vision"])


def _imbalance(images_by_mb) -> float:
    worst = 0.0
    for mb in images_by_mb:
        per_rank = [sum(im.shape[1] * im.shape[2] for im in b.images["vision"]) for b in mb]
        worst = max(worst, max(per_rank) / (sum(per_rank) / len(per_rank)))
    return worst


def test_patch_balancing_keeps_roles_in_agreement_and_evens_the_load(sample_dir: Path) -> None:
    ds = dataset(sample_dir, ["captions.jsonl"], min_pixels=64, max_pixels=1024)
    worse, better = [], []
    for step in range(6):
        _, text, images = _step(ds, step, 2, 2, balance=True)
        _, _, plain_images = _step(ds, step, 2, 2, balance=False)
        for t_mb, i_mb in zip(_by_microbatch(text), _by_microbatch(images)):
            # the language ranks' slots and the encoder ranks' slots hold the same samples
            assert torch.equal(torch.cat([b.tokens for b in t_mb]), torch.cat([b.tokens for b in i_mb]))
        plan = SamplePlan(global_batch_size=GLOBAL_BATCH, micro_batch_size=MBS, language_dp=2)
        for mb in range(plan.n_microbatches):  # same samples per micro-batch as the plan
            got = sorted(b.tokens[k].tolist() for b in _by_microbatch(text)[mb] for k in range(b.tokens.shape[0]))
            want = sorted(ds.sample(i).tokens.tolist() for i in plan.microbatch_indices(step, mb))
            assert got == want
        worse.append(_imbalance(_by_microbatch(plain_images)))
        better.append(_imbalance(_by_microbatch(images)))
    assert all(b <= w + 1e-9 for b, w in zip(better, worse)), (better, worse)
    assert sum(better) < sum(worse), (better, worse)


def test_balanced_order_groups() -> None:
    order = balanced_order(list(range(10, 18)), [9, 1, 1, 1, 8, 2, 2, 2], dp=2)
    groups = [order[:4], order[4:]]
    sums = [sum([9, 1, 1, 1, 8, 2, 2, 2][i - 10] for i in g) for g in groups]
    assert sums == [13, 13] and order == [10, 11, 12, 16, 13, 14, 15, 17]
    assert balanced_order([0, 1, 2, 3], [1, 1, 1, 1], dp=1) == [0, 1, 2, 3]


def _draw(loader: StepLoader, steps) -> list:
    out = []
    for s in steps:
        text, images = loader.get(s)
        out.append(([b.tokens for b in text] + [b.labels for b in text],
                    [im for b in images["vision"] for im in b.images["vision"]]))
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x, y) for x, y in zip(ta, tb)) and all(torch.equal(x, y) for x, y in zip(ia, ib))
        for (ta, ia), (tb, ib) in zip(a, b))


def test_loader_resumes_the_exact_stream(mixed) -> None:
    """Draw steps 0..5; or draw 0..2, save the state, build a new loader, load it, draw 3..5."""
    plan = SamplePlan(global_batch_size=GLOBAL_BATCH, micro_batch_size=MBS, language_dp=2)
    roles = Roles(text=(2, 1), images={"vision": (2, 0)})

    def loader() -> StepLoader:
        return StepLoader(mixed, plan, roles, steps=20, num_workers=2, prefetch_factor=2)

    straight = _draw(loader(), range(6))
    first = loader()
    head = _draw(first, range(3))
    state = pickle.loads(pickle.dumps(first.state_dict()))  # plain objects, as a checkpoint stores them
    assert state["next_step"] == 3
    resumed = loader()
    resumed.load_state_dict(state)
    assert _same(head + _draw(resumed, range(3, 6)), straight)
    # a loader for another placement's role continues at the saved step
    other = StepLoader(mixed, plan, Roles(text=(1, 0), images={"vision": (1, 0)}), steps=20, num_workers=0)
    other.load_state_dict(state)
    assert other.next_step == 3
    text, _ = other.get(3)
    assert torch.equal(torch.cat(straight[3][0][:2]),
                       torch.cat([b.tokens[2:] for b in text]))
