"""Per-step metrics: gathered to rank 0 by world reductions (never by assuming rank 0 holds a
given module), printed as one line, appended to metrics.jsonl and written to TensorBoard with
the same tags.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch
from torchtitan.components.metrics import TensorBoardLogger


def memory_gib(device: torch.device) -> float:
    """Peak memory of this process: GPU allocator peak, or peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_flops(device: torch.device, configured_tflops: float) -> float:
    """Peak dense bf16 FLOP/s of one device for MFU; 0 when unknown (CPU)."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        from torchtitan.tools.utils import get_peak_flops
        return get_peak_flops(torch.cuda.get_device_name(device))
    return 0.0


class MetricsWriter:
    """Rank 0 only: stdout, metrics.jsonl, TensorBoard."""

    def __init__(self, dump_folder: Path, enable_tensorboard: bool):
        dump_folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(dump_folder / "metrics.jsonl", "a")
        self.tb = TensorBoardLogger(str(dump_folder / "tb")) if enable_tensorboard else None

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
            parts.append(f"{name}: mfu {100 * m['mfu']:.1f}% mem {m['memory_gib']:.2f}GiB")
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
