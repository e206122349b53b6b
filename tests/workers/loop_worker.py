"""Runs `titan_mimo.train.train` for several cases in one torchrun launch, with faults injected
and the loop's reads traced, for tests/test_train.py's loop tests.

argv[1]: JSON list of cases, each {"name": str, "argv": [...], "nan_at": step | null,
"stop_at": [step, rank] | null, "trace": bool}; argv[2]: output folder.
- nan_at: after the backward of that step (1-based), this rank's first gradient is set to NaN,
  so the step's gradient norm (a world reduction) is NaN on every rank.
- stop_at: that rank sets the trainer's stop flag (as a SIGUSR1 would) just before the step is
  queued.
- trace: "events" lists, in order, "queued N" (train_step returned) and "read N" (read_step
  called), and "device_reads" counts the Tensor.tolist/item calls made inside train_step on a
  tensor that went through the device reduction `world_sum_` (the step's results; on CPU
  nothing else tells a device value from a host one).
Each rank writes <out>/<name>/rank<r>.json: {"error", "stop_signal", "events", "device_reads"}.
"""

from __future__ import annotations

import json
import sys
import weakref
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

import titan_mimo.distributed as distributed_module
import titan_mimo.trainer as trainer_module
from titan_mimo.distributed import init_distributed, pick_device
from titan_mimo.train import prepare, train
from titan_mimo.trainer import NonFiniteError, build_trainer


class Trace:
    def __init__(self):
        self.events: list[str] = []
        self.device_reads = 0
        self.in_step = False
        self.reduced: dict[int, weakref.ref] = {}
        """id -> tensor, for the tensors world_sum_ reduced on the device."""


def instrument(trainer, case: dict, trace: Trace) -> None:
    """Wrap this trainer's methods (instance attributes) for the case's injections and trace."""
    current = {"step": -1}
    forward_backward, run = trainer.forward_backward, trainer.runner.run
    train_step, read_step = trainer.train_step, trainer.read_step

    def forward_backward_(step):
        current["step"] = step
        if case.get("stop_at") and case["stop_at"] == [step + 1, dist.get_rank()]:
            trainer.stop_signal = "SIGUSR1"
        return forward_backward(step)

    def run_(data, global_tokens, train=True):
        loss = run(data, global_tokens, train)
        if train and current["step"] + 1 == case.get("nan_at"):
            grads = [p.grad for m in trainer.modules.values() for part in m.parts
                     for p in part.parameters() if p.grad is not None]
            g = grads[0]
            (g.to_local() if isinstance(g, DTensor) else g).fill_(float("nan"))
        return loss

    def train_step_(step):
        trace.in_step = True
        try:
            return train_step(step)
        finally:
            trace.in_step = False
            trace.events.append(f"queued {step + 1}")

    def read_step_(step, result):
        trace.events.append(f"read {step + 1}")
        return read_step(step, result)

    trainer.forward_backward, trainer.runner.run = forward_backward_, run_
    trainer.train_step, trainer.read_step = train_step_, read_step_


def count_device_reads(trace: Trace) -> None:
    """Patch Tensor.tolist/item and the device reduction for the whole process."""
    def counting(method):
        def wrapper(self, *args, **kwargs):
            ref = trace.reduced.get(id(self))
            if trace.in_step and ref is not None and ref() is self:
                trace.device_reads += 1
            return method(self, *args, **kwargs)
        return wrapper

    world_sum_ = distributed_module.world_sum_

    def tracked_world_sum_(t):
        trace.reduced[id(t)] = weakref.ref(t)
        return world_sum_(t)

    torch.Tensor.tolist = counting(torch.Tensor.tolist)
    torch.Tensor.item = counting(torch.Tensor.item)
    distributed_module.world_sum_ = trainer_module.world_sum_ = tracked_world_sum_


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    out_root = Path(sys.argv[2])
    device = pick_device()
    host_group = init_distributed(device, 120)
    rank = dist.get_rank()
    trace = Trace()
    count_device_reads(trace)
    for case in cases:
        setup = prepare(case["argv"])
        trainer = build_trainer(setup.cfg, setup.args, setup.placements, setup.dataset, device, host_group)
        trace.events, trace.device_reads = [], 0
        instrument(trainer, case, trace)
        error = None
        try:
            train(trainer, setup.resume, setup.initial)
        except NonFiniteError as e:
            error = str(e)
        folder = out_root / case["name"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{rank}.json").write_text(json.dumps({
            "error": error, "stop_signal": trainer.stop_signal, "events": trace.events,
            "device_reads": trace.device_reads}))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
