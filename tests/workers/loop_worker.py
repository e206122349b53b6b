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
- always: "marks" counts, per step (1-based, as a string), the clock marks the trainer's
  Timeline made while train_step ran; "comms" the calls into torch.distributed's collectives and
  point-to-point ops made while train_step ran, "comms_outside" those made between steps
  (reads, records, timeline merges); both after the trainer is built.
Each rank writes <out>/<name>/rank<r>.json: {"error", "stop_signal", "events", "device_reads",
"marks", "comms", "comms_outside"}.
"""

from __future__ import annotations

import json
import sys
import weakref
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

import titan_mimo.distributed as distributed_module
import titan_mimo.timing as timing_module
import titan_mimo.trainer as trainer_module
from titan_mimo.distributed import init_distributed, pick_device
from titan_mimo.train import prepare, train
from titan_mimo.trainer import NonFiniteError, build_trainer

COMMS = ("all_reduce", "all_gather", "gather", "broadcast", "barrier", "send", "recv", "batch_isend_irecv",
         "all_gather_into_tensor", "reduce_scatter_tensor", "all_to_all_single")
"""Counted by name. Not isend/irecv: pipelining's P2POp accepts only those very functions."""


class Trace:
    def __init__(self):
        self.events: list[str] = []
        self.device_reads = 0
        self.in_step = False
        self.step = 0
        """The step train_step is running (1-based), 0 between steps."""
        self.marks: Counter = Counter()
        self.comms: Counter = Counter()
        self.comms_outside = 0
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
        trace.in_step, trace.step = True, step + 1
        try:
            return train_step(step)
        finally:
            trace.in_step, trace.step = False, 0
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


def count_marks_and_comms(trace: Trace) -> None:
    """Patch the Timeline's clock mark (`timing.device_mark`, as the Timeline calls it) and
    torch.distributed's communication for the whole process."""
    mark = timing_module.device_mark

    def counting_mark(is_cuda):
        trace.marks[trace.step] += 1
        return mark(is_cuda)

    timing_module.device_mark = counting_mark
    for name in COMMS:
        def counting(*args, _fn=getattr(dist, name), **kwargs):
            if trace.step:
                trace.comms[trace.step] += 1
            else:
                trace.comms_outside += 1
            return _fn(*args, **kwargs)

        setattr(dist, name, counting)


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    out_root = Path(sys.argv[2])
    device = pick_device()
    host_group = init_distributed(device, 120)
    rank = dist.get_rank()
    trace = Trace()
    count_device_reads(trace)
    count_marks_and_comms(trace)
    for case in cases:
        setup = prepare(case["argv"])
        trainer = build_trainer(setup.cfg, setup.args, setup.placements, setup.dataset, device, host_group)
        trace.events, trace.device_reads = [], 0
        trace.marks, trace.comms, trace.comms_outside = Counter(), Counter(), 0
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
            "device_reads": trace.device_reads, "marks": {str(k): v for k, v in trace.marks.items()},
            "comms": {str(k): v for k, v in trace.comms.items()}, "comms_outside": trace.comms_outside}))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
