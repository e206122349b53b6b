"""titan_mimo/step.py: the optimizer step's pieces on plain tensors (one rank): loss tokens, the
gradient norm's weights, the clip coefficient, and per-part optimizers and schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from titan_mimo.build import BuiltModule
from titan_mimo.config_loader import config_from_dict
from titan_mimo.step import (build_optimizers, build_schedulers, clip_coefficient, count_loss_tokens,
                             language_lr_schedule, local_grad_sq, scale_grads, trainable_parts)


def _module(*parts: nn.Module, frozen: bool = False, lr_scale: float = 1.0) -> BuiltModule:
    return BuiltModule(name="m", is_encoder=False, parts=list(parts), stage_ids=list(range(len(parts))),
                       n_stages=len(parts), frozen=frozen, lr_scale=lr_scale, sharded=False)


def test_count_loss_tokens_skips_ignored_labels():
    labels = [torch.tensor([[1, -100, 3], [-100, -100, 4]]), torch.tensor([[5, 6, -100]])]
    assert count_loss_tokens(labels) == 5


def test_clip_coefficient():
    assert clip_coefficient(torch.tensor(4.0, dtype=torch.float64), 1.0).item() == 1.0 / (4.0 + 1e-6)
    assert clip_coefficient(torch.tensor(0.5, dtype=torch.float64), 1.0).item() == 1.0  # below the max
    assert clip_coefficient(torch.tensor(4.0, dtype=torch.float64), 0.0).item() == 1.0  # clipping off
    assert clip_coefficient(torch.tensor(math.nan, dtype=torch.float64), 1.0).item() == 1.0


def test_local_grad_sq_weights_replicated_gradients_by_the_stage_ranks():
    """A plain (replicated) gradient is held whole by each of the stage's ranks: each counts
    1 / stage_ranks of its square, so the world sum counts it once."""
    a, b = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    a.weight.grad = torch.tensor([[1.0, 2.0], [2.0, 0.0]])
    b.weight.grad = torch.tensor([[3.0, 0.0]])
    module = _module(a, b)
    assert local_grad_sq(module, 1, torch.device("cpu")).item() == pytest.approx(18.0, rel=1e-6)
    assert local_grad_sq(module, 4, torch.device("cpu")).item() == pytest.approx(18.0 / 4, rel=1e-6)
    scale_grads({"m": module}, torch.tensor(0.5, dtype=torch.float64))
    assert a.weight.grad.tolist() == [[0.5, 1.0], [1.0, 0.0]] and b.weight.grad.tolist() == [[1.5, 0.0]]


def test_one_optimizer_per_trainable_part_and_one_schedule_per_module():
    cfg = config_from_dict({"modules": {
        "vision": {"model": "vit/debug", "ranks": 1, "feeds": "language", "placeholder_id": 1, "frozen": True},
        "language": {"model": "hybrid_lm/debug", "ranks": 1, "lr_scale": 0.5},
    }, "training": {"steps": 10}, "lr_scheduler": {"warmup_steps": 2}})
    frozen_part = nn.Linear(2, 2)
    frozen_part.requires_grad_(False)
    parts = [nn.Linear(2, 2), frozen_part, nn.Linear(2, 2)]
    modules = {"vision": _module(nn.Linear(2, 2), frozen=True), "language": _module(*parts, lr_scale=0.5)}
    opts = build_optimizers(cfg, modules, torch.device("cpu"))
    assert list(opts) == ["language"]  # the frozen module gets none
    assert [part for part, _ in trainable_parts(modules["language"])] == [parts[0], parts[2]]
    assert len(opts["language"]) == 2
    assert all(o.param_groups[0]["lr"] == cfg.optimizer.lr * 0.5 for o in opts["language"])
    schedulers = build_schedulers(cfg, opts)
    lr_at = language_lr_schedule(cfg)
    for step in range(4):
        assert [o.param_groups[0]["lr"] for o in opts["language"]] == [lr_at(step)] * 2
        schedulers["language"].step()
