"""Where a step's time goes: torch.profiler around whole steps, summarised for a log.

Used by the trainer and the benchmark (`metrics.profile_step`): the kernels with the most device
time, the share of the steps' span in which the device was running any kernel (the rest it waited
on the host: launch overhead, Python, synchronisations), and the host ops with the most self CPU
time; for the benchmark's `--sync-debug`, where a step makes the host wait for the device; and
what a forward keeps for its backward (`saved_for_backward`).
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.autograd import DeviceType


def device_busy(events) -> tuple[float, float]:
    """(seconds with at least one kernel running, seconds from the first kernel's start to the
    last one's end) over the profiler's device events; overlapping kernels (FSDP's copy stream
    beside compute) count once, range annotations not at all."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == DeviceType.CUDA and not e.is_user_annotation
                   and not e.key.startswith(("Optimizer.", "ProfilerStep")))
    busy, cur_start, cur_end = 0.0, None, None
    for start, end in spans:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        busy += cur_end - cur_start
    return busy / 1e6, ((spans[-1][1] if spans else 0) - (spans[0][0] if spans else 0)) / 1e6


"""Kernel kinds for the per-kind totals, first match wins (names as the CUDA profiler reports
them: cuBLAS's `nvjet`/`gemm` kernels, mamba-ssm's SSD Triton kernels, Inductor's generated
`triton_` kernels (before "copy": their names list the fused ops, `_to_copy` among them),
cuDNN/flash attention (before "gemm": FlashAttention-4's CuTe DSL kernels are named
`kernel_cutlass_kernel_flash_attn...`), the fused optimizer, copies, fills)."""
KERNEL_KINDS = (
    ("attention", ("fmha", "flash_attn", "FlashAttention", "sdpa", "flash_fwd", "flash_bwd")),
    ("gemm", ("nvjet", "gemm", "cutlass", "xmma")),
    ("ssd scan", ("_chunk_", "_bmm_chunk", "_state_passing")),
    ("inductor", ("triton_",)),
    ("optimizer", ("FusedOptimizer", "multi_tensor_apply")),
    ("copy", ("Memcpy", "copy", "Copy", "CatArray")),
    ("fill", ("Memset", "fill", "Fill", "zero")),
    ("conv", ("conv",)),
)


def kernel_kind(name: str) -> str:
    for kind, needles in KERNEL_KINDS:
        if any(n in name for n in needles):
            return kind
    return "other"


def summary(prof, device: torch.device, n_steps: int, top: int = 15) -> list[str]:
    """Lines: kernel time per step and the top kernels, device-busy share, top host ops."""
    lines = []
    averages = prof.key_averages()
    if device.type == "cuda":
        # The optimizer's record_function range shows up as a device event spanning its kernels.
        kernels = [e for e in averages if e.device_type == DeviceType.CUDA and not e.key.startswith("Optimizer.")]
        total = sum(e.self_device_time_total for e in kernels) or 1.0
        lines.append(f"profile: {total / n_steps / 1e3:.1f} ms kernel time per step; top kernels:")
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]:
            lines.append(f"  {100 * e.self_device_time_total / total:5.1f}%  "
                         f"{e.self_device_time_total / n_steps / 1e3:7.2f} ms  x{e.count // n_steps:<4d} {e.key[:110]}")
        kinds: dict[str, list[float]] = {}
        for e in kernels:
            acc = kinds.setdefault(kernel_kind(e.key), [0.0, 0])
            acc[0] += e.self_device_time_total
            acc[1] += e.count
        lines.append("kernel time by kind per step: " + ", ".join(
            f"{kind} {t / n_steps / 1e3:.1f} ms (x{c // n_steps})"
            for kind, (t, c) in sorted(kinds.items(), key=lambda kv: -kv[1][0])))
        busy_s, span_s = device_busy(prof.events())
        if span_s > 0:
            lines.append(f"device busy {100 * busy_s / span_s:.1f}% of the profiled steps' span "
                         f"({busy_s / n_steps * 1e3:.1f} ms with a kernel running per step): the rest "
                         "the GPU waited for the host or a synchronisation")
    host = [e for e in averages if e.device_type == DeviceType.CPU]
    if not host:
        lines.append("host ops: not recorded (kernels only)")
        return lines
    lines.append("host ops by self CPU time per step:")
    for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:12]:
        lines.append(f"  {e.self_cpu_time_total / n_steps / 1e3:7.2f} ms  x{e.count // n_steps:<5d} {e.key[:100]}")
    return lines


def profile_steps(run_steps: Callable[[], None], device: torch.device, n_steps: int,
                  trace: Path | None = None, host: bool = True):
    """Run `run_steps()` (n_steps whole steps, synchronised at the end) under the profiler;
    returns the profiler. `trace`: also write a Chrome trace there (chrome://tracing, Perfetto).
    `host=False` (CUDA only) records the kernels alone: recording every host op slows a
    host-bound step by tens of percent, so only then is the device's busy share that of an
    unprofiled step."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    acts = ([ProfilerActivity.CPU] if host or not cuda else []) + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        run_steps()
        if cuda:
            torch.cuda.synchronize(device)
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    return prof


def print_profile(one_step: Callable[[], object], device: torch.device, n_steps: int = 2, top: int = 15,
                  host: bool = True) -> None:
    """Profile n_steps calls of one_step and print the summary (indented, for the bench);
    `host=False`: the kernels only (`profile_steps`)."""
    def run_steps():
        for _ in range(n_steps):
            one_step()
    prof = profile_steps(run_steps, device, n_steps, host=host)
    for line in summary(prof, device, n_steps, top):
        print("  " + line, flush=True)


def report_syncs(one_step, device, top: int = 8) -> None:
    """Run one step with CUDA sync debug mode on and print where the host waited for the device
    (each synchronising call's Python stack, most frequent first). A sync in the middle of a step
    lets the GPU run dry while the host issues what follows."""
    if device.type != "cuda":
        return
    sites: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1] if "/warnings.py" not in f.filename]
        ours = [f for f in frames if "titan_mimo" in f.filename or "/models/" in f.filename] or frames
        site = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in reversed(ours[-3:]))
        sites[site] = sites.get(site, 0) + 1

    torch.cuda.synchronize(device)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            one_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    print(f"  synchronising calls in one step: {sum(sites.values())}", flush=True)
    for site, count in sorted(sites.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    x{count:<4d} {site[:200]}", flush=True)


def saved_for_backward(fn: Callable[..., object], *args) -> tuple[object, dict[int, tuple[int, torch.dtype, list]]]:
    """Run `fn(*args)` and record what autograd keeps for the backward (saved-tensor hooks, so
    compiled graphs' saved tensors count too): per storage (its data pointer; views of one
    storage count once) its bytes, dtype and the shapes of the tensors saved on it. Returns
    (fn's output, that dict)."""
    kept: dict[int, tuple[int, torch.dtype, list]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        kept.setdefault(storage.data_ptr(), (storage.nbytes(), t.dtype, []))[2].append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, kept
