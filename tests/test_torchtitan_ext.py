"""The torchtitan adapters (titan_mimo.torchtitan_ext): each is checked on the installed
torchtitan version, and does what the trainer relies on."""

from __future__ import annotations

import gc
import weakref
from importlib.metadata import version

import torch
from torch import nn

from titan_mimo.torchtitan_ext import TORCHTITAN_CHECKED
from titan_mimo.torchtitan_ext.garbage_collection import garbage_collection
from titan_mimo.torchtitan_ext.lr_scheduler import warmup_decay_factor, warmup_decay_schedulers
from titan_mimo.torchtitan_ext.peak_flops import gpu_peak_flops
from titan_mimo.torchtitan_ext.tensorboard import TensorBoardLogger


def test_the_installed_torchtitan_is_the_one_the_adapters_were_checked_on():
    assert version("torchtitan") == TORCHTITAN_CHECKED, (
        f"torchtitan {version('torchtitan')} is installed but titan_mimo.torchtitan_ext was checked on "
        f"{TORCHTITAN_CHECKED}: re-check every adapter in torchtitan_ext/ against it, then update "
        "TORCHTITAN_CHECKED and the pin in pyproject.toml")


def test_warmup_decay_schedule_steps_every_optimizer_with_one_factor():
    opts = [torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr) for lr in (1.0, 0.5)]
    fields = {"warmup_steps": 2, "decay_type": "linear", "min_lr_factor": 0.0, "training_steps": 6}
    container = warmup_decay_schedulers(opts, **fields)
    factor = warmup_decay_factor(**fields)
    seen = []
    for step in range(6):
        seen.append([o.param_groups[0]["lr"] for o in opts])
        assert seen[-1] == [factor(step), 0.5 * factor(step)]
        for o in opts:
            o.step()
        container.step()
    assert 0 < seen[0][0] < seen[1][0] <= seen[2][0] == 1.0 and seen[-1][0] < seen[2][0]
    assert set(container.state_dict()) >= {"last_epoch"}


def test_peak_flops_of_known_gpus():
    assert gpu_peak_flops("NVIDIA H200") == 989e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12


def test_tensorboard_logger_writes_scalars(tmp_path):
    tb = TensorBoardLogger(str(tmp_path / "tb"))
    tb.log({"loss": 1.5, "modules/vision/mfu": 0.25}, 3)
    tb.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("modules/vision/mfu")] == [(3, 0.25)]


def test_garbage_collection_is_periodic_during_training_and_restored_after(monkeypatch):
    collections = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda generation=2: collections.append(generation) or real_collect(generation))
    assert gc.isenabled()
    with garbage_collection(3) as collector:
        assert not gc.isenabled()
        start = len(collections)  # the initial collection
        for step in range(1, 10):
            collector.run(step)
        assert collections[start:] == [1, 1, 1, 1]  # after the first step; steps 3, 6, 9
    assert gc.isenabled()
    with garbage_collection(0) as collector:
        assert collector is None and gc.isenabled()


def test_garbage_collection_frees_the_first_steps_cycles():
    """What the first step's compilation leaves behind (reference cycles holding tensors) is
    freed right after that step, not gc_freq steps later."""

    class Node:
        pass

    with garbage_collection(50) as collector:
        node = Node()
        node.self, node.tensor = node, torch.zeros(4)
        tensor = weakref.ref(node.tensor)
        del node
        assert tensor() is not None  # held by the cycle: automatic collection is off
        collector.run(7)  # the first step of a resumed run
        assert tensor() is None
