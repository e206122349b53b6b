"""Entry point: `torchrun --nproc-per-node N -m titan_mimo.train --config X.toml [--a.b=c ...]`.

Reads top to bottom: validate (no communication) -> build (process group, meshes, modules,
optimizers, bridges, schedule; titan_mimo/trainer.py) -> restore (checkpoint or initial weights)
-> train (steps, evaluation, metrics, checkpoints, stop signals).

The loop does not wait for the device on ordinary steps: it queues step N+1 and then reads
step N's results (loss, gradient norm, stop flag), which the device has finished by then, and
logs step N. A step whose results the loop needs before going on is read at once: a
checkpoint step (a non-finite step is never saved), a validation, profiled or recorded
(`metrics.timeline_steps`) step, the last step, the step after a stop request was seen, and
every step with `training.skip_nonfinite_steps` (which decides on the host before the optimizer
step). A recorded step's timeline is written once its checkpoint, if any, is saved.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from titan_mimo.build import module_args
from titan_mimo.checkpoint import Checkpointer, ResumePoint, checkpoint_folder, find_resume
from titan_mimo.config import JobConfig
from titan_mimo.config_loader import load_config, write_config
from titan_mimo.data.build import build_dataset
from titan_mimo.data.dataset import ImageTextDataset
from titan_mimo.data.mock import MockImageCaption
from titan_mimo.distributed import env_world_size, init_distributed, pick_device
from titan_mimo.export import export_checkpoint, load_weights, read_index
from titan_mimo.hf import training as hf_training
from titan_mimo.metrics import MetricsWriter, StepClock
from titan_mimo.profiling import profile_steps, summary
from titan_mimo.timeline import require_matplotlib, write_step
from titan_mimo.topology import resolve_placements
from titan_mimo.torchtitan_ext.garbage_collection import garbage_collection
from titan_mimo.trainer import StepResult, Trainer, build_trainer

PREEMPTED_EXIT_CODE = 75
"""Exit code of a run stopped by SIGTERM/SIGUSR1 after saving a complete checkpoint (EX_TEMPFAIL):
not finished, so a retry loop (`until torchrun ...; do :; done`) re-runs it and it resumes."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextmanager
def stop_on_signals(trainer: Trainer):
    """SIGTERM/SIGUSR1 (preemption) only set a flag. It rides on the reduction of the next step
    queued (say N); when the loop reads step N, one step late, every rank sees it, and the run
    reads step N+1 (already queued) at once, saves step N+1 and stops. If step N is read at once
    (a checkpoint, validation or last step), the run saves and stops at step N."""
    def handler(signum, frame):
        trainer.stop_signal = signal.Signals(signum).name
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def restore(trainer: Trainer, checkpointer: Checkpointer | None, resume: ResumePoint | None,
            initial: dict | None) -> int:
    """Resume from a checkpoint, or load initial weights, or neither; returns the first step."""
    cfg, topo = trainer.cfg, trainer.topo
    if resume is not None:
        start = checkpointer.load(trainer, resume)
        if topo.rank == 0:
            print(f"titan_mimo: resumed from {resume.path} (step {start})", flush=True)
        return start
    for name, m in trainer.modules.items():
        if (folder := hf_training.folder_of(cfg.modules[name].model)) is not None:
            loaded = hf_training.load_weights(m.parts, folder, is_encoder=bool(cfg.modules[name].feeds))
            if topo.rank == 0:
                print(f"titan_mimo: {name} weights from {folder}" if loaded is not None else
                      f"titan_mimo: WARNING: {folder} holds no weights (config.json only): {name} starts "
                      "from the initialisation", flush=True)
    if initial is not None:
        path = Path(cfg.checkpoint.initial_load_path)
        for name, m in trainer.modules.items():
            load_weights(m.parts, path, name, initial)
        if topo.rank == 0:
            print(f"titan_mimo: initial weights from {path} (exported at step {initial.get('step')})", flush=True)
    return 0


def train(trainer: Trainer, resume: ResumePoint | None = None, initial: dict | None = None) -> list[dict]:
    cfg, topo = trainer.cfg, trainer.topo
    ckpt_cfg = cfg.checkpoint
    checkpointer = Checkpointer(cfg, topo) if ckpt_cfg.enable else None
    start = restore(trainer, checkpointer, resume, initial)
    writer = None
    if topo.rank == 0:
        dump = Path(cfg.job.dump_folder)
        write_config(cfg, dump / "config.toml")
        writer = MetricsWriter(dump, cfg.metrics.enable_tensorboard)
        print(f"titan_mimo: {topo.describe()} | {topo.n_microbatches} micro-batches/step | "
              f"{cfg.parallelism.pipeline_schedule if topo.placements[cfg.language_name].pp > 1 else 'no PP'}",
              flush=True)
    records = []
    tokens_per_step = cfg.training.global_batch_size * cfg.training.seq_len
    clock = StepClock(trainer.device, start)
    issue_s: list[float] = []  # host time to queue each step read since the last logged one

    def read_at_once(done: int, stopping: bool) -> bool:
        """Whether step `done` is read before the next one is queued (see the module docstring)."""
        return (stopping or done == cfg.training.steps or done == cfg.metrics.profile_step
                or done in cfg.metrics.timeline_steps
                or (checkpointer is not None and done % ckpt_cfg.interval == 0)
                or (cfg.validation.enable and done % cfg.validation.freq == 0)
                or cfg.training.skip_nonfinite_steps)

    def finish(done: int, result: StepResult, *, at_once: bool, stopping: bool) -> bool:
        """Read step `done` (1-based), then save, validate and log it as due; returns whether a
        stop was requested on any rank (the step's reduction carries every rank's flag)."""
        trainer.read_step(done - 1, result)  # raises NonFiniteError before anything of the step is saved
        issue_s.append(result.issue_s)
        stop = stopping or result.stop
        if at_once:
            clock.pause(done, result.end)  # nothing else is queued: what follows is not step time
        saved_s = None
        # A stop seen on a step read late is acted on at the next step, which is read at once.
        if at_once and checkpointer is not None and (done % ckpt_cfg.interval == 0
                                                     or done == cfg.training.steps or stop):
            with clock.excluded(), trainer.timeline.host_span("checkpoint"):
                checkpointer.save(trainer, done)
                if stop:
                    checkpointer.wait()
            saved_s = checkpointer.blocked_s
        if done in cfg.metrics.timeline_steps:
            with clock.excluded():
                path = write_step(trainer.timeline.take(), cfg=cfg, topo=topo, host_group=trainer.host_group,
                                  step=done)
            if path is not None:
                print(f"titan_mimo: step {done} timeline: {path}", flush=True)
        validate = cfg.validation.enable and done % cfg.validation.freq == 0
        # A validation step is also a logged step, so its val_loss has a record to go in.
        if done % cfg.metrics.log_freq == 0 or done == cfg.training.steps or validate:
            step_time_s = clock.mean_step_s(done, result.end)
            issue_mean_s = statistics.fmean(issue_s)
            issue_s.clear()
            with clock.excluded():
                record = trainer.step_metrics(done - 1, result, step_time_s, issue_mean_s)
                if validate:
                    record["val_loss"] = trainer.evaluate(done - 1)
                if saved_s is not None:
                    record["checkpoint_s"] = saved_s  # time the loop was blocked by the save
                records.append(record)
                if writer is not None:
                    writer.log(record)
        if at_once:
            clock.resume(done)
        return stop

    try:
        with stop_on_signals(trainer), garbage_collection(cfg.training.gc_freq) as collector:
            late = None  # (step done, its results) queued but not read yet
            stopping = False
            for step in range(start, cfg.training.steps):
                done = step + 1
                queued = time.perf_counter()
                if done == cfg.metrics.profile_step:
                    result = profiled_step(trainer, step)
                else:
                    result = trainer.train_step(step)
                result.end = clock.mark()
                result.issue_s = time.perf_counter() - queued
                trainer.tokens_seen += tokens_per_step
                if collector is not None:
                    collector.run(done)
                if late is not None:  # the previous step: done on the device by now, or nearly
                    stopping = finish(*late, at_once=False, stopping=False)
                    late = None
                if not read_at_once(done, stopping):
                    late = (done, result)
                    continue
                if finish(done, result, at_once=True, stopping=stopping):
                    trainer.stop_signal = trainer.stop_signal or "a signal on another rank"
                    if topo.rank == 0:
                        saved = (f"checkpoint step-{done} is complete; re-run the same command to resume"
                                 if checkpointer is not None else "checkpointing is off: nothing saved")
                        print(f"titan_mimo: stopping after step {done} ({trainer.stop_signal}): {saved}",
                              file=sys.stderr, flush=True)
                    break
            if checkpointer is not None:
                checkpointer.wait()
    finally:
        if writer is not None:
            writer.close()
    finished = not trainer.stop_signal
    if finished and ckpt_cfg.export_at_end and topo.rank == 0:
        steps = cfg.training.steps
        out_dir = checkpoint_folder(cfg) / f"export-step-{steps}"
        export_checkpoint(checkpoint_folder(cfg) / f"step-{steps}", out_dir, ckpt_cfg.export_dtype)
        print(f"titan_mimo: exported weights ({ckpt_cfg.export_dtype}) to {out_dir}", flush=True)
    return records


def profiled_step(trainer: Trainer, step: int) -> StepResult:
    """One training step under torch.profiler: a Chrome trace per rank and a printed summary."""
    results = []
    trace = Path(trainer.cfg.job.dump_folder) / "profile" / f"rank{trainer.topo.rank}_step{step + 1}.json"
    prof = profile_steps(lambda: results.append(trainer.train_step(step)), trainer.device, 1, trace,
                         host=not trainer.cfg.metrics.profile_kernels_only)
    lines = summary(prof, trainer.device, n_steps=1)
    print("\n".join([f"titan_mimo: rank {trainer.topo.rank} step {step + 1} profile (trace {trace}):"]
                    + [f"  {line}" for line in lines]), flush=True)
    (result,) = results
    return result


@dataclass(frozen=True)
class Setup:
    """Everything main() checks before any process group exists."""
    cfg: JobConfig
    args: dict
    placements: dict
    dataset: MockImageCaption | ImageTextDataset
    resume: ResumePoint | None
    initial: dict | None


def prepare(argv: list[str]) -> Setup:
    """Parse and validate config, placements, data and the checkpoint to resume from, reading
    only files: raises ValueError with the message a user sees."""
    cfg = load_config(argv)
    if cfg.metrics.timeline_steps and cfg.metrics.timeline_png:
        require_matplotlib()
    args = module_args(cfg)
    placements = resolve_placements(cfg, env_world_size(), {n: a.tp_divisors() for n, a in args.items()})
    dataset = build_dataset(cfg, args)
    resume = find_resume(cfg, verbose=os.environ.get("RANK", "0") == "0")
    initial = None
    if cfg.checkpoint.initial_load_path and resume is None:
        initial = read_index(Path(cfg.checkpoint.initial_load_path), {n: m.model for n, m in cfg.modules.items()})
    return Setup(cfg, args, placements, dataset, resume, initial)


@record
def main(argv: list[str] | None = None) -> list[dict]:
    # Everything that can be checked without communication is checked first, so a bad config
    # fails in a second with a message instead of after process-group start-up.
    try:
        setup = prepare(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"titan_mimo: configuration error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    device = pick_device()
    host_group = init_distributed(device, setup.cfg.comm.timeout_seconds)
    try:
        trainer = build_trainer(setup.cfg, setup.args, setup.placements, setup.dataset, device, host_group)
        records = train(trainer, setup.resume, setup.initial)
    except BaseException as e:
        print(f"titan_mimo: rank {dist.get_rank()} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
    finally:
        dist.destroy_process_group()
    if trainer.stop_signal:
        raise SystemExit(PREEMPTED_EXIT_CODE)
    return records


if __name__ == "__main__":
    main()
