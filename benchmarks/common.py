"""What the benchmark programs here share: their common options, timing a training step, and the
result each one writes as JSON (`{label: result}`), which `benchmarks/run.py` reads.

A result has the keys of `titan_mimo.bench.BenchResult` that a peer can fill: `step_s`,
`step_s_median`, `host_s`, `tokens_per_s`, `images_per_s`, `tflops`, `mfu` (None without a known
peak) and `peak_mem_gib`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch

from titan_mimo.bench import time_loop
from titan_mimo.metrics import peak_flops


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, allow_abbrev=False)
    p.add_argument("--warmup", type=int, default=3, help="steps before timing (compilation happens there)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results to this JSON file")
    p.add_argument("--tiny", action="store_true",
                   help="debug shapes, fp32, eager (a CPU check of the program, not a measurement)")
    return p


def device_and_dtype(tiny: bool) -> tuple[torch.device, torch.dtype]:
    """The GPU and bf16; with --tiny (or without a GPU) what the machine has, in fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device()), (torch.float32 if tiny else torch.bfloat16)
    return torch.device("cpu"), torch.float32


def time_step(step: Callable[[], object], device: torch.device, warmup: int, steps: int
              ) -> tuple[list[float], float]:
    """(each timed step's seconds, host seconds to issue one) after `warmup` steps, timed as
    titan_mimo's bench times its loops (`titan_mimo.bench.time_loop`; Python's garbage
    collection left on, as a plain training loop has it)."""
    times = time_loop(step, device, warmup=warmup, steps=steps, gc_freq=0)
    return times.step_s, times.host_s


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int = 3, calls: int = 20) -> float:
    """Mean device seconds of `fn` called back to back (`time_step`, its result dropped)."""
    def call() -> None:
        fn()
    return statistics.fmean(time_step(call, device, warmup, calls)[0])


def result(step_s: list[float], host_s: float, device: torch.device, *, flops: float,
           tokens: int = 0, images: int = 0) -> dict:
    """One run's result; `flops` per step (the program's own count), `tokens`/`images` per step."""
    mean = statistics.fmean(step_s)
    peak = peak_flops(device, 0.0)
    return {"step_s": mean, "step_s_median": statistics.median(step_s), "host_s": host_s,
            "tokens_per_s": tokens / mean, "images_per_s": images / mean, "tflops": flops / mean / 1e12,
            "mfu": flops / mean / peak if peak else None,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0}


def report(label: str, r: dict) -> None:
    rate = (f"tokens/s={r['tokens_per_s']:,.0f} " if r["tokens_per_s"] else "") + \
           (f"images/s={r['images_per_s']:.2f} " if r["images_per_s"] else "")
    mfu = f"MFU={100 * r['mfu']:.1f}% " if r["mfu"] is not None else "MFU=n/a "
    print(f"[{label}] step={r['step_s'] * 1e3:.2f} ms (median {r['step_s_median'] * 1e3:.2f}, host "
          f"{r['host_s'] * 1e3:.2f}) {rate}{r['tflops']:.1f} TFLOP/s {mfu}"
          f"peak_mem={r['peak_mem_gib']:.1f} GiB", flush=True)


def write(results: dict[str, dict], path: str | None) -> None:
    if path is not None:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
