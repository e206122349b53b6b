"""Checkpoints: one DCP directory per saved step; resume from the newest complete one, onto the
same placement or any other.

Keys inside a checkpoint (DCP flattens nested dicts with dots):

    <module>.model.<fqn>               weights; FSDP/TP shards are DTensors and pipeline stages
                                       keep global FQNs, so DCP reshards onto any placement
    <module>.optimizer.state.<fqn>.*   AdamW state, torch's flattened optimizer state dict
    <module>.lr_scheduler.*            the module's LR schedule position
    train.step, train.tokens_seen
    rank<r>                            this rank's data-loader state and RNG states (pickled
                                       bytes), restored only when resuming onto the same placement

Every key starts with the module's name, so modules with different DP sizes never collide.

A `step-N/` directory counts as complete only once `COMPLETE.json` exists in it: rank 0 writes
it (atomically, by rename) after a barrier that a rank reaches only once its own files are
written, and lists every file with its size. A save that a crash cut short has no marker; a
file truncated or lost later fails the size check; both are skipped on resume with a warning
(or, when that step was asked for by `load_step`, refused with an error naming the file).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from titan_mimo.config import JobConfig
from titan_mimo.step import trainable_parts
from titan_mimo.topology import Topology

MARKER = "COMPLETE.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def checkpoint_folder(cfg: JobConfig) -> Path:
    folder = Path(cfg.checkpoint.folder)
    return folder if folder.is_absolute() else Path(cfg.job.dump_folder) / folder


def step_dirs(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step-N directory, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def problem_with(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None when it is complete and intact."""
    marker = path / MARKER
    if not marker.is_file():
        return f"{marker} is missing: the save did not finish on every rank"
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"{marker} is unreadable ({e})"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes where {size} were written (truncated or overwritten)"
    return None


def read_marker(path: Path) -> dict:
    return json.loads((path / MARKER).read_text())


@dataclass(frozen=True)
class ResumePoint:
    step: int
    path: Path
    marker: dict


def find_resume(cfg: JobConfig, *, verbose: bool) -> ResumePoint | None:
    """The checkpoint to resume from, read from the file system alone (no communication), so a
    bad `load_step` fails before any process group starts. `verbose`: print skip warnings."""
    c = cfg.checkpoint
    if not c.enable:
        return None
    folder = checkpoint_folder(cfg)
    if c.load_step != -1:
        path = folder / f"step-{c.load_step}"
        if not path.is_dir():
            have = [s for s, _ in step_dirs(folder)]
            raise ValueError(f"checkpoint.load_step = {c.load_step}: {path} does not exist "
                             f"(steps present: {have or 'none'})")
        if (problem := problem_with(path)) is not None:
            raise ValueError(f"checkpoint.load_step = {c.load_step}: {problem}")
        return ResumePoint(c.load_step, path, read_marker(path))
    for step, path in step_dirs(folder):
        problem = problem_with(path)
        if problem is None:
            return ResumePoint(step, path, read_marker(path))
        if verbose:
            print(f"titan_mimo: warning: skipping checkpoint {path}: {problem}", file=sys.stderr, flush=True)
    return None


def placement_signature(cfg: JobConfig, topo: Topology) -> dict:
    """What must be equal for per-rank state (data loaders, RNG) to carry over rank by rank."""
    return {"world_size": topo.world_size, "colocated": topo.colocated,
            "placements": {n: {"start": p.start, "size": p.size, "dp_replicate": p.dp_replicate, "dp_shard": p.dp_shard,
                               "tp": p.tp, "pp": p.pp} for n, p in topo.placements.items()},
            "pipeline_schedule": cfg.parallelism.pipeline_schedule,
            "stages_per_rank": cfg.parallelism.stages_per_rank}


def _rank_state(trainer) -> bytes:
    # Pickled by us and by DCP alike: a checkpoint directory must be trusted like code (README).
    state = {"data": trainer.feed.state_dict(), "rng_cpu": torch.get_rng_state()}
    if trainer.device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(trainer.device)
    return pickle.dumps(state)


def _load_rank_state(trainer, blob: bytes) -> None:
    state = pickle.loads(blob)
    trainer.feed.load_state_dict(state["data"])
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], trainer.device)


def _module_state(trainer, name: str, with_optimizer: bool) -> dict:
    m = trainer.modules[name]
    model = {}
    for part in m.parts:
        model.update(get_model_state_dict(part))
    out = {"model": model}
    opts = trainer.optimizers.get(name, [])
    if opts and with_optimizer:
        optim = {}
        for (part, _), opt in zip(trainable_parts(m), opts, strict=True):
            optim.update(get_optimizer_state_dict(part, opt, options=_FLAT))
        out["optimizer"] = optim
        out["lr_scheduler"] = trainer.schedulers[name].state_dict()
    return out


class Checkpointer:
    """Saves and loads the trainer's state. Every method is called on every rank, in the same
    order (DCP plans over the whole world)."""

    def __init__(self, cfg: JobConfig, topo: Topology):
        self.cfg, self.rank = cfg, topo.rank
        self.folder = checkpoint_folder(cfg)
        self.signature = placement_signature(cfg, topo)
        self.models = {n: m.model for n, m in cfg.modules.items()}
        self.is_async = cfg.checkpoint.async_mode == "async"
        # A background save talks over its own group, so its collectives never interleave with
        # the training step's on the default group or the host group (gloo default timeout: 30
        # minutes; the configured one instead).
        self.group = (dist.new_group(backend="gloo", timeout=timedelta(seconds=cfg.comm.timeout_seconds))
                      if self.is_async else None)
        self.pending = None
        """(step, path, future) of an async save not yet marked complete."""
        self.blocked_s = 0.0
        """Time the last save kept the training loop waiting."""

    # ---- save ------------------------------------------------------------------------------

    def state_dict(self, trainer, step: int) -> dict:
        sd = {name: _module_state(trainer, name, with_optimizer=True) for name in trainer.modules}
        sd["train"] = {"step": step, "tokens_seen": trainer.tokens_seen}
        sd[f"rank{self.rank}"] = _rank_state(trainer)
        return sd

    def save(self, trainer, step: int) -> None:
        """Save the state after `step` completed steps as step-<step>/."""
        t0 = time.perf_counter()
        self.wait()
        path = self.folder / f"step-{step}"
        if self.rank == 0:
            # A leftover of an earlier run (e.g. killed while saving this step) must not mix its
            # files into this one; its marker goes first, so it is never complete-looking.
            if path.exists():
                (path / MARKER).unlink(missing_ok=True)
                shutil.rmtree(path)
            path.mkdir(parents=True)
        dist.barrier(group=self.group)
        sd = self.state_dict(trainer, step)
        if self.is_async:
            result = dcp.async_save(sd, checkpoint_id=str(path), process_group=self.group)
            future = getattr(result, "upload_completion", result)
            self.pending = (step, path, future)
        else:
            dcp.save(sd, checkpoint_id=str(path))
            self._mark_complete(step, path)
        self.blocked_s = time.perf_counter() - t0

    def wait(self) -> None:
        """Finish an outstanding async save and mark it complete."""
        if self.pending is None:
            return
        step, path, future = self.pending
        self.pending = None
        future.result()
        self._mark_complete(step, path)

    def _mark_complete(self, step: int, path: Path) -> None:
        dist.barrier(group=self.group)  # every rank's files are on disk
        if self.rank == 0:
            files = {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()}
            marker = {"step": step, "files": files, "models": self.models, **self.signature,
                      "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            tmp = path / (MARKER + ".tmp")
            tmp.write_text(json.dumps(marker, indent=1))
            os.replace(tmp, path / MARKER)
            self._purge()

    def _purge(self) -> None:
        k = self.cfg.checkpoint.keep_latest_k
        if k <= 0:
            return
        complete = [(s, p) for s, p in step_dirs(self.folder) if problem_with(p) is None]
        for _, path in complete[k:]:
            (path / MARKER).unlink()  # never leave a half-deleted checkpoint looking complete
            shutil.rmtree(path)

    # ---- load ------------------------------------------------------------------------------

    def load(self, trainer, point: ResumePoint) -> int:
        """Restore `trainer` from `point` (any placement); returns the number of completed steps."""
        stored = set(dcp.FileSystemReader(str(point.path)).read_metadata().state_dict_metadata)
        sd, with_optimizer = {}, {}
        for name in trainer.modules:
            if not any(k.startswith(f"{name}.model.") for k in stored):
                have = sorted({k.split(".")[0] for k in stored if ".model." in k})
                raise ValueError(f"checkpoint {point.path} has no weights for module '{name}' "
                                 f"(it has: {', '.join(have)})")
            with_optimizer[name] = any(k.startswith(f"{name}.optimizer.") for k in stored)
            if name in trainer.optimizers and not with_optimizer[name]:
                self._say(f"warning: {point.path} has no optimizer state for '{name}' (frozen when "
                          "saved?): its AdamW starts fresh")
            sd[name] = _module_state(trainer, name, with_optimizer[name])
            missing = [k for k in sd[name]["model"] if f"{name}.model.{k}" not in stored]
            if missing:
                raise ValueError(f"checkpoint {point.path}: module '{name}' lacks {len(missing)} "
                                 f"weights, e.g. {missing[:3]} (was it saved with another model?)")
        sd["train"] = {"step": 0, "tokens_seen": 0}
        same_placement = {k: point.marker.get(k) for k in self.signature} == self.signature
        rank_key = f"rank{self.rank}"
        if same_placement:
            sd[rank_key] = b""
        else:
            self._say(f"resuming {point.path} onto another placement: weights and optimizer states "
                      "reshard; data-loader and RNG state restart from the step (the sample plan "
                      "depends on the step alone)")
        dcp.load(sd, checkpoint_id=str(point.path))
        for name, m in trainer.modules.items():
            for part in m.parts:
                set_model_state_dict(part, sd[name]["model"], options=StateDictOptions(strict=False))
            opts = trainer.optimizers.get(name, [])
            if opts and with_optimizer[name]:
                for (part, _), opt in zip(trainable_parts(m), opts, strict=True):
                    set_optimizer_state_dict(part, opt, sd[name]["optimizer"], options=_FLAT)
                trainer.schedulers[name].load_state_dict(sd[name]["lr_scheduler"])
        if same_placement:
            _load_rank_state(trainer, sd[rank_key])
        trainer.tokens_seen = sd["train"]["tokens_seen"]
        if sd["train"]["step"] != point.step:
            raise ValueError(f"checkpoint {point.path} holds step {sd['train']['step']}, not {point.step}")
        return point.step

    def _say(self, msg: str) -> None:
        if self.rank == 0:
            print(f"titan_mimo: {msg}", file=sys.stderr, flush=True)
