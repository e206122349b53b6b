"""titan_mimo/stages.py: a language model's pipeline stages, composed from its parts, keep the
model's parameter names, chain to the whole model, and the last one ends in the fused loss."""

from __future__ import annotations

import torch

from titan_mimo.data.batch import StepData
from titan_mimo.embeddings import EncoderEmbeddings
from titan_mimo.models import build_model
from titan_mimo.models.common import init_model_for_testing
from titan_mimo.stages import LanguageStage
from titan_mimo.timing import Timeline


def _lm(seed=0):
    model = build_model("hybrid_lm/debug")
    init_model_for_testing(model, seed)
    return model


def _stages(full, bounds: list[int]) -> list[LanguageStage]:
    n = len(bounds) - 1
    return [LanguageStage(full, range(bounds[i], bounds[i + 1]), is_first=i == 0, is_last=i == n - 1)
            for i in range(n)]


def test_stages_chain_to_the_whole_model_under_its_names():
    full = _lm()
    names = dict(full.named_parameters())
    tokens = torch.randint(0, 256, (2, 12))
    stages = _stages(full, [0, 2, 5, 6])
    assert [list(s.layers) for s in stages] == [["0", "1"], ["2", "3", "4"], ["5"]]
    assert stages[0].norm is None and stages[1].tok_embeddings is None and stages[2].output is not None
    # Every parameter on exactly one stage, under the whole model's name (init seeds, checkpoints).
    staged = [(fqn, p) for s in stages for fqn, p in s.named_parameters()]
    assert sorted(fqn for fqn, _ in staged) == sorted(names)
    assert all(p is names[fqn] for fqn, p in staged)
    h = tokens
    for stage in stages:
        h = stage(h)
    assert torch.equal(h, full(tokens))


def test_last_stage_ends_in_the_fused_loss():
    full = _lm()
    tokens = torch.randint(0, 256, (2, 12))
    labels = torch.randint(0, 256, (2, 12))
    labels[:, :3] = -100
    first, last = _stages(full, [0, 3, 6])
    loss = last(first(tokens), labels_BS=labels)
    assert loss.shape == () and loss.dtype == torch.float32
    assert torch.equal(loss, full(tokens, labels=labels))
    # A stage that is not last ignores labels (pipelining gives a rank's keyword inputs to each
    # of its stages).
    assert torch.equal(first(tokens, labels_BS=labels), first(tokens))


def test_first_stage_merges_each_micro_batchs_embeddings_in_order():
    """The first stage takes micro-batch i's encoder embeddings at its i-th forward (colocated:
    from the encoder run here, a span of a recorded step's timeline); it refuses another
    micro-batch."""
    from titan_mimo.data.batch import Batch

    full = _lm()
    placeholder = 1
    tokens = torch.randint(2, 256, (2, 2, 8))
    tokens[:, :, 1:3] = placeholder
    emb = [torch.randn(4, full.args.dim) for _ in range(2)]

    class Encoder:  # stands in for an encoder role's module: returns the rows it was given
        def __init__(self):
            self.parts = [lambda images: images[0][0]]

    from titan_mimo.embeddings import EncoderRole
    role = EncoderRole(module=Encoder(), frozen=False, placeholder_id=placeholder, cell=1, bridge=None)
    timeline = Timeline(torch.device("cpu"))
    embeddings = EncoderEmbeddings(roles={"vision": role}, language="language", device=torch.device("cpu"),
                                   timeline=timeline)
    (stage,) = _stages(full, [0, 6])
    stage.embeddings = embeddings
    data = StepData(text=[Batch(tokens=tokens[mb], labels=tokens[mb], images={}) for mb in range(2)],
                    images={"vision": [Batch(tokens=tokens[mb], labels=tokens[mb],
                                             images={"vision": [emb[mb][None]]}) for mb in range(2)]})
    timeline.begin()
    embeddings.begin(data)
    for mb in range(2):
        h = full.embed(tokens[mb]).reshape(-1, full.args.dim).index_copy(
            0, (tokens[mb].flatten() == placeholder).nonzero()[:, 0], emb[mb]).view(2, 8, -1)
        assert torch.equal(stage(tokens[mb], torch.full((2,), mb)), full.forward_hidden(h))
    timeline.end()
    spans = timeline.take()["spans"]
    assert [(s["kind"], s["module"], s["mb"]) for s in spans] == [("forward", "vision", 0), ("forward", "vision", 1)]
    embeddings.begin(data)
    try:
        stage(tokens[1], torch.full((2,), 1))
    except RuntimeError as e:
        assert "ran micro-batch [1, 1] as its forward number 0" in str(e)
    else:
        raise AssertionError("a micro-batch out of order was merged")
