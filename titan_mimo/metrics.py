"""Per-step metrics: gathered to rank 0 by world reductions (never by assuming rank 0 holds a
given module), printed as one line, appended to metrics.jsonl and written to TensorBoard with
the same tags; and the clock that times training steps without making the host wait.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from titan_mimo.timing import device_mark
from titan_mimo.torchtitan_ext.peak_flops import gpu_peak_flops
from titan_mimo.torchtitan_ext.tensorboard import TensorBoardLogger


def memory_gib(device: torch.device) -> float:
    """Peak memory of this process: GPU allocator peak, or peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def alloc_retries(device: torch.device) -> int:
    """How often the CUDA caching allocator has failed an allocation, freed its cached blocks and
    tried again since the process started (0 off CUDA). Each retry synchronizes the device and
    calls cudaFree: a step near the memory limit that fits this way can be much slower."""
    if device.type == "cuda":
        return torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
    return 0


def peak_flops(device: torch.device, configured_tflops: float) -> float:
    """Peak dense bf16 FLOP/s of one device for MFU; 0 when unknown (CPU): the record's `mfu` is
    then null and the step line says `mfu n/a`."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device))
    return 0.0


class StepClock:
    """Mean time of the training steps in a window, measured without a wait per step.

    The loop marks the end of each step as it queues it (`mark`). A window runs from the
    previous logged step's end (or the run's start) to the logged step's end, and its mean is
    its time over its steps. On CUDA a mark is an event on the stream, so a window is device
    time from the end of one step to the end of another, read once the host has waited for the
    later one (it reads that step's results anyway); on CPU a mark is the host time, and host
    time spent in `excluded()` work between two marks (building and writing records) is taken
    out. At a step whose results the loop read at once (`pause`: nothing else is queued), the
    window stops; what follows there (checkpoint save, validation, record) stays outside it,
    and `resume` starts it again before the next step is queued."""

    def __init__(self, device: torch.device, step: int):
        self.is_cuda = device.type == "cuda"
        self.excluded_s = 0.0
        """CPU: host time spent in excluded work so far."""
        self._closed_s, self._closed_steps = 0.0, 0
        self.resume(step)

    def mark(self):
        """A point in the device's timeline: a timed CUDA event recorded now, or on CPU (host
        time, excluded time so far)."""
        if self.is_cuda:
            return device_mark(True)
        return (time.perf_counter(), self.excluded_s)

    def _between(self, start, end) -> float:
        if self.is_cuda:
            end.synchronize()  # the step it ends has been waited for: no wait on later work
            return start.elapsed_time(end) / 1e3
        return (end[0] - start[0]) - (end[1] - start[1])

    @contextmanager
    def excluded(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.excluded_s += time.perf_counter() - t0

    def resume(self, step: int) -> None:
        """Start (or restart) the window with `step` steps done and nothing queued."""
        self._start, self._start_step = self.mark(), step

    def pause(self, step: int, end) -> None:
        """Close the running part of the window at the end of step `step` (mark `end`)."""
        if self._start is not None:
            self._closed_s += self._between(self._start, end)
            self._closed_steps += step - self._start_step
        self._start = None

    def mean_step_s(self, step: int, end) -> float:
        """Mean step time over the window that ends at step `step` (mark `end`); the next window
        starts there."""
        total, steps = self._closed_s, self._closed_steps
        if self._start is not None:
            total += self._between(self._start, end)
            steps += step - self._start_step
            self._start, self._start_step = end, step
        self._closed_s, self._closed_steps = 0.0, 0
        if steps <= 0:
            raise AssertionError(f"step {step}: a timing window with {steps} steps")
        return total / steps


class MetricsWriter:
    """Rank 0 only: stdout, metrics.jsonl, TensorBoard."""

    def __init__(self, dump_folder: Path, enable_tensorboard: bool):
        dump_folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(dump_folder / "metrics.jsonl", "a")
        self.tb = TensorBoardLogger(str(dump_folder / "tb")) if enable_tensorboard else None
        self._retries: dict[str, int] = {}  # each module's alloc_retries at the last warning

    def log(self, record: dict) -> None:
        step = record["step"]
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            flat = {k: v for k, v in _flatten(record).items() if k != "step"}
            self.tb.log(flat, step)
            self.tb.writer.flush()
        parts = [f"step {step:>5}", f"loss {record['loss']:.4f}", f"grad_norm {record['grad_norm']:.3f}",
                 f"lr {record['lr']:.2e}", f"tok/s {record['tokens_per_s']:.0f}"]
        for name, m in record.get("modules", {}).items():
            mfu = "n/a" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%"
            part = f"{name}: mfu {mfu} mem {m['memory_gib']:.2f}GiB"
            retries = m.get("alloc_retries", 0)
            if retries:
                part += f" retries {retries}"
                if retries > self._retries.get(name, 0):
                    print(f"titan_mimo: step {step}: {name}: the CUDA caching allocator has retried "
                          f"{retries} allocations so far (freed its cache and tried again: each "
                          "retry synchronizes and slows the step); the step is at the memory limit: "
                          "checkpoint more activations (activation_checkpoint, memory_budget) or "
                          "lower micro_batch_size", file=sys.stderr, flush=True)
                    self._retries[name] = retries
            parts.append(part)
        if "val_loss" in record:
            parts.append(f"val_loss {record['val_loss']:.4f}")
        if "checkpoint_s" in record:
            parts.append(f"checkpoint {record['checkpoint_s']:.2f}s")
        print(" | ".join(parts), file=sys.stdout, flush=True)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float)):
            out[key] = v
    return out
