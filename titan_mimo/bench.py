"""Benchmark a training config on one GPU: the trainer itself, next to the same modules in a bare
PyTorch loop, so the trainer's overhead is a ratio from one run.

    python -m titan_mimo.bench --config train_configs/vlm_hybrid_1gpu.toml [--section.key=value ...]
        [--warmup 3] [--steps 10] [--no-bare] [--encoder NAME] [--sync-debug] [--json PATH]

A config that trains is a config that benchmarks: the config and its `--section.key=value`
overrides are read exactly as `titan_mimo.train` reads them (batch, sequence, precision, compile,
activation checkpointing, attention and scan kernels are all config fields), and what is timed
is built by `titan_mimo.build.build_modules`. What the benchmark adds:

"titan_mimo" run: the trainer (`build_trainer`, `train`) for `--warmup` + `--steps` steps (the
bench sets `training.steps` to that and `metrics.log_freq = 1`); the step times, throughput, MFU
per module and memory are the trainer's own metrics records of the timed steps (device time
between step ends, CUDA events). `--metrics.profile_step=N` profiles step N as the trainer does
(trace and summary; `metrics.profile_kernels_only` too) and leaves it out of the timing.

"bare" run (skipped with `--no-bare`): the same modules built again by `build_modules` (the
same initial weights: init depends on the seed and parameter names only), always unwrapped with
fp32 weights under autocast, in a plain loop: each micro-batch of one fixed batch drawn from the
config's dataset, encoders, merge, the language model's loss, backward, then one AdamW step; no
schedule, data loading, clipping, LR schedule or metrics. Its FLOPs are those of the trainer's
steps. `overhead` = trainer step time / bare step time - 1.

`--encoder NAME`: that encoder alone, built by `build_modules` as the config builds it (the
trainer needs a language model, a peer such as timm's ViT does not), in the bench's loop with
a loss on its output embeddings (the mean of their squares, as the peer's loop); images from
the config's dataset. No bare run; a set `metrics.profile_step` profiles two steps after the
timed ones.

FLOPs are the models' training counts (3 x forward matmul FLOPs: language batch x seq x
`flops_per_token(seq)`, causal attention counted as the full square as torchtitan does; encoders
`flops_per_image(H, W)` per image); recomputation is not counted. MFU = FLOPs / step time / peak
(`metrics.peak_tflops`, else torchtitan's table for the GPU; none on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from titan_mimo import metrics
from titan_mimo.build import COMPUTE_DTYPES, build_modules
from titan_mimo.compat import scope_activation_memory_budget
from titan_mimo.config import JobConfig
from titan_mimo.config_loader import parse_cli_overrides
from titan_mimo.distributed import env_world_size, init_distributed, pick_device
from titan_mimo.models import merge_embeddings
from titan_mimo.models.language.loss import IGNORE_INDEX, linear_cross_entropy_sum
from titan_mimo.profiling import print_profile, report_syncs
from titan_mimo.timing import device_mark
from titan_mimo.topology import build_topology, uses_fused_loss
from titan_mimo.torchtitan_ext.garbage_collection import garbage_collection
from titan_mimo.train import Setup, prepare, train
from titan_mimo.trainer import build_trainer

SET_BY_BENCH = ("training.steps", "metrics.log_freq")
"""Config keys the bench sets itself (from --warmup and --steps; a record per step)."""


@dataclass(kw_only=True)
class BenchResult:
    run: str
    """"titan_mimo" (the trainer, or with --encoder the encoder as the trainer builds it) or
    "bare" (the same modules in a plain loop)."""
    step_s: float
    """Mean time of the timed steps."""
    step_s_median: float
    host_s: float | None
    """Host time to queue one step's work: the trainer's `host_issue_s`, or the bench loop's time
    per step without waiting for the device. Close to `step_s`: host-bound, or the host waited on
    a full launch queue behind a busy device (a profile's device-busy share tells which)."""
    tokens_per_s: float
    images_per_s: float
    tflops: float
    """Achieved training TFLOP/s by the models' FLOP counts."""
    mfu: float | None
    """Fraction of the device's dense peak; None where the peak is unknown (CPU)."""
    modules: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per module: "tflops" and "mfu" (titan_mimo runs)."""
    peak_mem_gib: float
    alloc_retries: int
    """CUDA caching-allocator retries by the end of the run (each frees cached blocks and
    synchronises: the run is at its memory limit)."""
    loss: float
    """The last timed step's loss."""


@dataclass(kw_only=True)
class LoopTimes:
    """What `time_loop` measured over the timed steps."""

    step_s: list[float]
    host_s: float
    loss: float | None
    """The last step's, where the step returns one."""


def peak_flops(cfg: JobConfig, device: torch.device) -> float | None:
    return metrics.peak_flops(device, cfg.metrics.peak_tflops) or None


def _result(run: str, cfg: JobConfig, device, step_s: list[float], host_s: float | None, flops: float,
            images: int | None, loss: float, modules: dict | None = None) -> BenchResult:
    """`images`: None for a step of the language model (tokens/s from the config's batch and
    sequence), the step's image count for an encoder alone."""
    mean = statistics.fmean(step_s)
    peak = peak_flops(cfg, device)
    return BenchResult(
        run=run, step_s=mean, step_s_median=statistics.median(step_s), host_s=host_s,
        tokens_per_s=(cfg.training.global_batch_size * cfg.training.seq_len / mean) if images is None else 0.0,
        images_per_s=0.0 if images is None else images / mean, tflops=flops / mean / 1e12,
        mfu=flops / mean / peak if peak else None, modules=modules or {},
        peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0,
        alloc_retries=metrics.alloc_retries(device), loss=loss)


# ---- the trainer ---------------------------------------------------------------------------


def timed_records(records: list[dict], warmup: int, profile_step: int) -> list[dict]:
    """The trainer's records of the timed steps: after the warm-up, without the profiled step."""
    timed = [r for r in records if r["step"] > warmup and r["step"] != profile_step]
    if not timed:
        raise ValueError(f"no timed steps in {len(records)} records (warm-up {warmup})")
    return timed


def flops_per_step(record: dict, placements: dict) -> dict[str, float]:
    """Each module's FLOPs in the step of a metrics record (its TFLOP/s per device x devices x
    step time)."""
    return {name: m["tflops_per_device"] * 1e12 * placements[name].size * record["step_time_s"]
            for name, m in record["modules"].items()}


def trainer_result(setup: Setup, device, records: list[dict], warmup: int) -> tuple[BenchResult, float]:
    """The titan_mimo run's result from the trainer's records, and its mean FLOPs per step."""
    cfg = setup.cfg
    timed = timed_records(records, warmup, cfg.metrics.profile_step)
    step_s = [r["step_time_s"] for r in timed]
    per_module = [flops_per_step(r, setup.placements) for r in timed]
    peak = peak_flops(cfg, device)
    modules = {}
    for name in cfg.modules:
        flops = statistics.fmean(f[name] for f in per_module)
        tflops = flops / statistics.fmean(step_s) / 1e12
        modules[name] = {"tflops": tflops, "mfu": tflops * 1e12 / peak if peak else None}
    flops = statistics.fmean(sum(f.values()) for f in per_module)
    host_s = statistics.fmean(r["host_issue_s"] for r in timed)
    result = _result("titan_mimo", cfg, device, step_s, host_s, flops, None, timed[-1]["loss"], modules)
    result.peak_mem_gib = max(m["memory_gib"] for r in timed for m in r["modules"].values())
    return result, flops


# ---- the bench's loop ----------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(start, end) -> float:
    return start.elapsed_time(end) / 1e3 if isinstance(start, torch.cuda.Event) else end - start


def time_loop(one_step: Callable[[], Tensor | None], device: torch.device, *, warmup: int, steps: int,
              gc_freq: int) -> LoopTimes:
    """`warmup` steps (compilation happens there), then `steps` timed ones without waiting for
    the device between them (a CUDA event marks each end), Python's garbage collection handled
    as the trainer handles it with `training.gc_freq` (0: left on)."""
    gc.collect()
    with garbage_collection(gc_freq) as collector:
        for i in range(warmup):
            one_step()
            if collector is not None:
                collector.run(i + 1)
        _sync(device)
        marks = [device_mark(device.type == "cuda")]
        start = time.perf_counter()
        for i in range(steps):
            loss = one_step()
            marks.append(device_mark(device.type == "cuda"))
            if collector is not None:
                collector.run(warmup + i + 1)
        host_s = (time.perf_counter() - start) / steps
        _sync(device)
    step_s = [_seconds(a, b) for a, b in zip(marks, marks[1:])]
    return LoopTimes(step_s=step_s, host_s=host_s, loss=None if loss is None else float(loss.detach()))


def adamw(params: list[nn.Parameter], cfg: JobConfig, device: torch.device) -> torch.optim.AdamW:
    """Plain torch AdamW with the config's settings (fused on CUDA)."""
    o, cuda = cfg.optimizer, device.type == "cuda"
    return torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                             weight_decay=o.weight_decay, fused=cuda, foreach=not cuda)


def loop_step(batches: list, loss_of: Callable[[object], Tensor], optimizer: torch.optim.Optimizer,
              device: torch.device) -> Callable[[], Tensor]:
    """One step of the bench's loops: forward and backward of each micro-batch, then one
    optimizer step; the step returns its summed loss, on the device."""
    def one_step() -> Tensor:
        total = torch.zeros((), device=device)
        for batch in batches:
            loss = loss_of(batch)
            loss.backward()
            total += loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total
    return one_step


def fixed_batches(setup: Setup, device: torch.device) -> list:
    """One step's micro-batches (the dataset's first samples), on the device."""
    t = setup.cfg.training
    out = []
    for start in range(0, t.global_batch_size, t.micro_batch_size):
        batch = setup.dataset.batch(range(start, start + t.micro_batch_size))
        batch.tokens, batch.labels = batch.tokens.to(device), batch.labels.to(device)
        batch.images = {n: [im.to(device) for im in ims] for n, ims in batch.images.items()}
        out.append(batch)
    return out


class BareLanguageLoss(nn.Module):
    """Summed loss of a micro-batch through the language model, the encoders' embeddings merged
    at their placeholders: the model's parts (`tok_embeddings`, `layers`, `norm`, `output`, as a
    whole model and a language stage both name them) called in turn, the stand-in of the
    trainer's stages and loss in the bare loop. A module of its own so the language module's
    activation memory budget can scope its forward."""

    def __init__(self, lm: nn.Module, fused_loss: bool):
        super().__init__()
        self.lm, self.fused_loss = lm, fused_loss

    def forward(self, tokens_BS: Tensor, embeds: dict[int, Tensor], labels_BS: Tensor) -> Tensor:
        h_BSD = self.lm.layers(merge_embeddings(self.lm.tok_embeddings(tokens_BS), tokens_BS, embeds))
        h_BSD = self.lm.norm(h_BSD)
        if self.fused_loss:
            return linear_cross_entropy_sum(h_BSD.flatten(0, 1), self.lm.output.weight, labels_BS.flatten())
        return F.cross_entropy(self.lm.output(h_BSD).flatten(0, 1).float(), labels_BS.flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")


def bare_run(setup: Setup, topo, device, *, warmup: int, steps: int, flops: float) -> BenchResult:
    """The config's modules (unwrapped, fp32 weights under autocast) in a plain loop."""
    cfg = dataclasses.replace(setup.cfg, parallelism=dataclasses.replace(setup.cfg.parallelism,
                                                                         fsdp_one_rank=False))
    modules = build_modules(cfg, setup.args, topo, device)
    lm_name = cfg.language_name
    lm_cfg = cfg.modules[lm_name]
    loss_fn = BareLanguageLoss(modules[lm_name].parts[0], uses_fused_loss(cfg, topo.placements[lm_name]))
    if lm_cfg.activation_checkpoint == "memory_budget":
        scope_activation_memory_budget(loss_fn, lm_cfg.memory_budget)
    encoders = {name: modules[name].parts[0] for name in cfg.encoders}
    trainable = [p for name, m in modules.items() if not cfg.modules[name].frozen for p in m.parameters()]
    optimizer = adamw(trainable, cfg, device)
    batches = fixed_batches(setup, device)
    loss_tokens = sum(int((b.labels != IGNORE_INDEX).sum()) for b in batches)
    dtype = COMPUTE_DTYPES[cfg.training.mixed_precision]
    dim = setup.args[lm_name].dim

    def loss_of(batch) -> Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            embeds = {cfg.modules[name].placeholder_id:
                      (enc(batch.images[name]) if batch.images.get(name) else torch.zeros(0, dim, device=device))
                      for name, enc in encoders.items()}
            return loss_fn(batch.tokens, embeds, batch.labels) / loss_tokens

    times = time_loop(loop_step(batches, loss_of, optimizer, device), device, warmup=warmup, steps=steps, gc_freq=cfg.training.gc_freq)
    return _result("bare", cfg, device, times.step_s, times.host_s, flops, None, times.loss)


def encoder_run(setup: Setup, topo, device, name: str, *, warmup: int, steps: int,
                sync_debug: bool = False) -> BenchResult:
    """One encoder alone, built as the config builds it, trained on the mean square of its
    output embeddings."""
    cfg = setup.cfg
    if name not in cfg.encoders:
        raise ValueError(f"--encoder {name!r} is not an encoder of the config; encoders: "
                         f"{', '.join(cfg.encoders) or 'none'}")
    # A topology holding this module's placement alone, so build_modules builds it alone.
    alone = dataclasses.replace(topo, placements={name: topo.placements[name]})
    (module,) = build_modules(cfg, setup.args, alone, device).values()
    model = module.parts[0]
    optimizer = adamw(module.parameters(), cfg, device)
    batches = [b.images[name] for b in fixed_batches(setup, device)]
    flops = sum(model.flops_per_image(*im.shape[-2:]) for images in batches for im in images)

    one_step = loop_step(batches, lambda images: model(images).float().square().mean(), optimizer, device)
    times = time_loop(one_step, device, warmup=warmup, steps=steps, gc_freq=cfg.training.gc_freq)
    result = _result("titan_mimo", cfg, device, times.step_s, times.host_s, flops,
                     sum(len(images) for images in batches), times.loss)
    result.modules = {name: {"tflops": result.tflops, "mfu": result.mfu}}
    if 0 < cfg.metrics.profile_step:
        print_profile(one_step, device, host=not cfg.metrics.profile_kernels_only)
    if sync_debug:
        report_syncs(one_step, device)
    return result


# ---- the command ---------------------------------------------------------------------------


def fmt(r: BenchResult) -> str:
    rate = (f"tokens/s={r.tokens_per_s:,.0f} " if r.tokens_per_s else "") + \
           (f"images/s={r.images_per_s:.2f} " if r.images_per_s else "")
    mfu = f"MFU={100 * r.mfu:.1f}% " if r.mfu is not None else "MFU=n/a "
    host = f" (host {r.host_s * 1e3:.1f} ms)" if r.host_s is not None else ""
    per_module = "".join(f" {n}={100 * m['mfu']:.1f}%" for n, m in r.modules.items()
                         if m["mfu"] is not None and len(r.modules) > 1)
    return (f"[{r.run:10s}] step={r.step_s * 1e3:.1f} ms (median {r.step_s_median * 1e3:.1f}){host} "
            f"{rate}{r.tflops:.1f} TFLOP/s {mfu}{per_module} peak_mem={r.peak_mem_gib:.1f} GiB "
            f"alloc_retries={r.alloc_retries} loss={r.loss:.4f}")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The bench's own options, and the config arguments (`--config PATH --a.b=c ...`)."""
    p = argparse.ArgumentParser(
        prog="python -m titan_mimo.bench", allow_abbrev=False, description=__doc__.split("\n\n")[0],
        usage="%(prog)s --config PATH.toml [--section.key=value ...] [options]",
        epilog="--config and the --section.key=value overrides are read as titan_mimo.train reads them.")
    p.add_argument("--warmup", type=int, default=3, help="steps before timing (compilation happens there)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--no-bare", action="store_true", help="skip the bare PyTorch loop")
    p.add_argument("--encoder", default=None, metavar="NAME",
                   help="time this encoder of the config alone (no trainer, no bare loop)")
    p.add_argument("--sync-debug", action="store_true",
                   help="after the timed steps, run one more step with CUDA's sync debug mode on and "
                        "list where the host waited for the device")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results to this JSON file")
    args, config_argv = p.parse_known_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error(f"--steps {args.steps} must be >= 1 and --warmup {args.warmup} >= 0")
    try:
        _, overrides = parse_cli_overrides(config_argv)
    except ValueError as e:
        p.error(str(e))
    clash = [key for key, _ in overrides if key in SET_BY_BENCH]
    if clash:
        p.error(f"--{clash[0]} is set by the bench (training.steps = --warmup + --steps, "
                "metrics.log_freq = 1)")
    total = args.warmup + args.steps
    return args, config_argv + [f"--training.steps={total}", "--metrics.log_freq=1"]


def run(argv: list[str]) -> dict:
    """Run the benchmark; returns {"titan_mimo": BenchResult, "bare": BenchResult | None,
    "overhead": trainer step time / bare step time - 1 (or None)}."""
    args, config_argv = parse_args(argv)
    setup = prepare(config_argv)
    cfg = setup.cfg
    if env_world_size() != 1:
        raise ValueError("the bench runs one process (one GPU); benchmarks/multi_gpu.py runs several")
    if cfg.metrics.profile_step > args.warmup + args.steps:
        raise ValueError(f"metrics.profile_step = {cfg.metrics.profile_step} is after the bench's last "
                         f"step ({args.warmup} + {args.steps})")
    device = pick_device()
    host_group = init_distributed(device, cfg.comm.timeout_seconds)
    bare = overhead = None
    try:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"bench: {' '.join(config_argv)} on {device} ({name}), torch {torch.__version__}", flush=True)
        if args.encoder is not None:
            topo = build_topology(cfg, setup.placements, device.type)
            ours = encoder_run(setup, topo, device, args.encoder, warmup=args.warmup, steps=args.steps,
                               sync_debug=args.sync_debug)
            print(fmt(ours), flush=True)
        else:
            trainer = build_trainer(cfg, setup.args, setup.placements, setup.dataset, device, host_group)
            # The resume point is ignored: a benchmark starts from the initial weights.
            records = train(trainer, None, setup.initial)
            if args.sync_debug:
                report_syncs(lambda: trainer.train_step(cfg.training.steps), device)
            ours, flops = trainer_result(setup, device, records, args.warmup)
            print(fmt(ours), flush=True)
            topo = trainer.topo
            del trainer
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            if not args.no_bare:
                bare = bare_run(setup, topo, device, warmup=args.warmup, steps=args.steps, flops=flops)
                print(fmt(bare), flush=True)
                overhead = ours.step_s / bare.step_s - 1
                print(f"trainer overhead vs the bare loop: {100 * overhead:+.1f}%", flush=True)
    finally:
        dist.destroy_process_group()
    out = {"titan_mimo": ours, "bare": bare, "overhead": overhead}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: (asdict(v) if isinstance(v, BenchResult) else v) for k, v in out.items()}, f, indent=1)
    return out


def main() -> None:
    try:
        run(sys.argv[1:])
    except ValueError as e:
        print(f"titan_mimo.bench: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
