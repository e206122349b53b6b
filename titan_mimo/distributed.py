"""Process-group start-up, device choice and world-wide scalar reductions.

The backend is NCCL on GPUs and gloo on CPU. Every collective and point-to-point op gets the
configured timeout, so a peer that died or diverged turns into an error on this rank instead
of a hang; torchrun then stops every other rank (exit code non-zero on all).

Values the host already holds (loss-token counts, metrics, timings) are reduced over a host
group (gloo) made once next to the default group: a reduction through NCCL would queue them
behind the device's work and make the host wait for all of it to read the result back.
Structured host values (a recorded step's spans) reach rank 0 as JSON (`gather_json`), not
pickles.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """World size as torchrun announces it, readable before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_distributed(device: torch.device, timeout_seconds: int) -> dist.ProcessGroup:
    """Start the default process group (a one-process group when not launched by torchrun) and
    return the host group for `world_sum`/`world_max`: on GPUs a gloo group over the whole
    world (a world collective), on CPU the default group, which is gloo already. Both get the
    timeout (`new_group` would otherwise default to gloo's 30 minutes);
    `dist.destroy_process_group()` destroys both."""
    timeout = timedelta(seconds=timeout_seconds)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        device_id = device if device.type == "cuda" else None
        is_launched = "MASTER_PORT" in os.environ or env_world_size() > 1  # torchrun, or set by hand
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        if is_launched:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            dist.init_process_group(backend, timeout=timeout, device_id=device_id)
        else:
            # A world of one outside torchrun rendezvouses in-process: no TCP port, so runs side
            # by side on one machine (a test suite, float8_convergence --parallel) cannot collide
            # (a free port picked here, then bound by the store, raced: EADDRINUSE).
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout,
                                    device_id=device_id)
        if device.type == "cpu" and env_world_size() > 1:
            # Several processes share the cores; more than one intra-op thread each was 6-9x
            # slower on small ops (research note, cpu-feasibility section 6).
            torch.set_num_threads(1)
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo", timeout=timeout)


def world_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the world in place, on its device, and return it without reading it back
    (the host does not wait for the device)."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def world_sum(values: list[float], host_group: dist.ProcessGroup) -> list[float]:
    """Sum host values over the world through the host group (`init_distributed`): the
    device's queue is not involved, so the host does not wait for it."""
    return _host_all_reduce(values, host_group, dist.ReduceOp.SUM)


def world_max(values: list[float], host_group: dist.ProcessGroup) -> list[float]:
    return _host_all_reduce(values, host_group, dist.ReduceOp.MAX)


def _host_all_reduce(values: list[float], host_group: dist.ProcessGroup, op) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op, group=host_group)
    return t.tolist()


def gather_json(obj, host_group: dist.ProcessGroup) -> list | None:
    """Every rank's `obj` (JSON-serialisable), in rank order, on rank 0 (None elsewhere): each
    rank's JSON text as bytes through the host group, padded to the longest."""
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    world = dist.get_world_size(host_group)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64), group=host_group)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[:data.numel()] = data
    is_root = dist.get_rank(host_group) == 0
    buffers = [torch.empty(longest, dtype=torch.uint8) for _ in range(world)] if is_root else None
    dist.gather(padded, buffers, dst=0, group=host_group)
    if not is_root:
        return None
    return [json.loads(b[:int(s)].numpy().tobytes()) for b, s in zip(buffers, sizes)]
