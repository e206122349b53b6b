"""The Trainer: what one rank holds (modules, optimizers, schedulers, bridges, schedule, its
`DataFeed`) and one training step on it: load this rank's data -> forward/backward of every micro-batch ->
global loss and gradient norm -> clip, optimizer and LR steps, all queued on the device without
reading anything back -> later, `read_step` (the step's loss, gradient norm and stop flag) and
`step_metrics` (world reductions of host values over the host group). A step travels between
them as a `StepResult`. `build_trainer` puts it together after the process group exists; `titan_mimo/train.py` runs it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from titan_mimo.bridge import Bridge
from titan_mimo.build import COMPUTE_DTYPES, BuiltModule, build_modules
from titan_mimo.config import JobConfig
from titan_mimo.data.batch import StepData
from titan_mimo.data.dataset import ImageTextDataset
from titan_mimo.data.feed import DataFeed
from titan_mimo.data.mock import MockImageCaption
from titan_mimo.data.plan import SamplePlan
from titan_mimo.distributed import world_max, world_sum, world_sum_
from titan_mimo.embeddings import EncoderEmbeddings, EncoderRole
from titan_mimo.expert_load import ExpertLoad
from titan_mimo.metrics import alloc_retries, memory_gib, peak_flops
from titan_mimo.models import build_from_args
from titan_mimo.schedule import StepRunner, theoretical_bubble_fraction
from titan_mimo.step import (build_optimizers, build_schedulers, clip_coefficient, count_loss_tokens,
                             language_lr_schedule, local_grad_sq, scale_grads)
from titan_mimo.timing import StepTiming, Timeline, host_clock_offset
from titan_mimo.topology import Topology, build_topology, uses_fused_loss


class NonFiniteError(RuntimeError):
    pass


class HostCopy:
    """A device tensor's values, copied to pinned host memory in stream order when made and read
    later: `values()` waits only for the work queued before the copy, not for what the host has
    queued since (the next step). On CPU it holds the tensor itself."""

    def __init__(self, t: torch.Tensor):
        self._done = None
        if t.device.type == "cuda":
            self._host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self._host.copy_(t, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
        else:
            self._host = t

    def values(self) -> list:
        if self._done is not None:
            self._done.synchronize()
        return self._host.tolist()


@dataclass(kw_only=True)
class StepResult:
    """One training step as the loop sees it: queued by `Trainer.train_step`, read later by
    `Trainer.read_step` (loss, gradient norm, stop flag), then turned into a record by
    `Trainer.step_metrics`."""

    global_tokens: float
    """The step's loss tokens over the world (the loss divides by it)."""
    data: StepData
    """What this rank loaded for the step (for its FLOP and data metrics)."""
    data_counts: dict
    """The feed's skip counters right after the step's data was loaded."""
    timing: StepTiming
    """Where this rank's time went in the step's forward and backward."""
    reduced: Tensor | None = None
    """On the device: the world sum of (loss, squared gradient norm, stop flag), until the
    optimizer step has queued its clipping from it."""
    pending: HostCopy | None = None
    """Host copy of `reduced`, made when the step's work is queued; None once read."""
    loss: float | None = None
    grad_norm: float | None = None
    stop: bool = False
    """Some rank received a stop signal (it rode on this step's reduction)."""
    memory_gib: float = 0.0
    """This process's peak memory so far, after the step was queued."""
    alloc_retries: int = 0
    """CUDA allocator retries so far, after the step was queued."""
    end: object = None
    """The step's end mark on the loop's `StepClock` (set by the loop)."""
    issue_s: float = 0.0
    """Host seconds the loop took to queue the step (set by the loop; `host_issue_s`)."""
    expert_counts: Tensor | None = None
    """MoE language model: the world sum of the step's tokens per expert [MoE layers, experts]
    (on the device), until the optimizer step has updated the correction biases from it."""
    expert_pending: HostCopy | None = None
    """Host copy of `expert_counts`, read by `step_metrics`."""

    def read(self) -> None:
        """Wait for the step's reduction and read loss, gradient norm and stop flag (once)."""
        if self.pending is None:
            return
        loss, grad_sq, stop = self.pending.values()
        self.pending = None
        self.loss, self.grad_norm, self.stop = loss, math.sqrt(grad_sq), stop > 0


@dataclass(kw_only=True)
class Trainer:
    cfg: JobConfig
    topo: Topology
    device: torch.device
    host_group: dist.ProcessGroup
    """World group for reductions of host values (gloo; `init_distributed`)."""
    modules: dict[str, BuiltModule]
    runner: StepRunner
    feed: DataFeed
    optimizers: dict
    """module -> one AdamW per part this rank holds (trainable modules only)."""
    schedulers: dict
    """module -> torchtitan LR scheduler container over that module's optimizers."""
    flop_counters: dict
    """Meta-device models per module, for their FLOP formulas."""
    lr_at: object
    """step -> the language module's LR (for metrics)."""
    expert_load: ExpertLoad
    """The MoE blocks' load balancing (inert without MoE blocks)."""
    timeline: Timeline
    """Spans of the steps `metrics.timeline_steps` lists (`train_step` records them)."""
    tokens_seen: int = 0
    """Tokens (samples x seq_len) of every completed step, restored on resume."""
    stop_signal: str = ""
    """Name of a stop signal this rank received; it rides on the next step's reduction, so every
    rank learns of it when that step's results are read (`titan_mimo/train.py` says when)."""

    def global_loss_tokens(self, data: StepData) -> float:
        local = count_loss_tokens([b.labels for b in data.text]) if self.feed.is_loss_rank else 0
        (total,) = world_sum([local], self.host_group)
        if total == 0:
            raise ValueError("a step has no loss tokens (every label is -100); check the data")
        return total

    # ---- one step ----------------------------------------------------------------------------

    def forward_backward(self, step: int) -> StepResult:
        """Forward and backward of every micro-batch, then the step's one world reduction of
        (loss, squared gradient norm, stop flag), queued on the device and not yet read. The
        loss-token count is reduced on the host first (the loss divides by it)."""
        with self.timeline.span("data", ""):
            data = self.feed.load(step, "train")
            counts = dict(self.feed.counts)
        with self.timeline.span("loss_tokens", ""):  # a world sum: it waits for every rank
            global_tokens = self.global_loss_tokens(data)
        self.expert_load.begin_step(global_tokens)
        loss_local = self.runner.run(data, global_tokens, train=True)
        with self.timeline.span("global_reduce", ""):
            expert_counts = self.expert_load.reduce()
            grad_sq = sum(local_grad_sq(m, self.topo.placements[n].size // self.topo.placements[n].pp, self.device)
                          for n, m in self.modules.items())
            # The stop flag rides on the step's one reduction, so all ranks stop at the same step.
            # torch.full, not torch.tensor: a copy from host memory would wait for the device.
            stop = torch.full((), float(bool(self.stop_signal)), dtype=torch.float64, device=self.device)
            reduced = world_sum_(torch.stack([loss_local if self.feed.is_loss_rank else torch.zeros_like(stop),
                                              grad_sq, stop]))
        # The step's record is built later (after the next step is queued): keep what it needs.
        return StepResult(reduced=reduced, global_tokens=global_tokens, data=data, data_counts=counts,
                          timing=self.runner.train_timing, expert_counts=expert_counts)

    def read_step(self, step: int, result: StepResult) -> None:
        """Wait for step `step`'s (loss, squared gradient norm, stop flag) and read them into
        `result`; a no-op once read. Without `skip_nonfinite_steps` a non-finite loss or norm
        raises NonFiniteError: call this before saving the step."""
        result.read()
        loss, grad_norm = result.loss, result.grad_norm
        if not self.cfg.training.skip_nonfinite_steps and not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise NonFiniteError(f"step {step + 1}: non-finite loss {loss} or grad norm {grad_norm} "
                                 "(the run stops without saving this step; set "
                                 "training.skip_nonfinite_steps = true to skip such steps)")

    def optimizer_step(self, step: int, result: StepResult) -> None:
        """Clip with the one global coefficient, step every module's optimizer and schedule.

        The coefficient is computed on the device from the queued reduction, so the optimizer
        steps are issued without the host waiting for the backward, and nothing is read back:
        `read_step` reads the step's results later, typically after the next step is queued.
        With `skip_nonfinite_steps` the host must see them before stepping the optimizers, so
        that mode waits for the device's backward in every step."""
        cfg = self.cfg
        reduced, result.reduced = result.reduced, None
        if cfg.training.skip_nonfinite_steps:
            result.pending = HostCopy(reduced)
            result.read()
            loss, grad_norm = result.loss, result.grad_norm
            stepped = math.isfinite(loss) and math.isfinite(grad_norm)
            if not stepped and self.topo.rank == 0:
                print(f"titan_mimo: step {step + 1}: non-finite loss {loss} or grad norm {grad_norm}: "
                      "step skipped", file=sys.stderr, flush=True)
        else:
            stepped = True
        if stepped:
            with self.timeline.span("clip", ""):
                scale_grads(self.modules, clip_coefficient(reduced[1].sqrt(), cfg.training.max_norm))
        with self.timeline.span("optimizer", ""):
            if stepped:
                for opts in self.optimizers.values():
                    for opt in opts:
                        opt.step()
            # The correction biases move with the optimizer step (a skipped step moves nothing).
            self.expert_load.update_biases(result.expert_counts, apply=stepped)
            if result.expert_counts is not None:
                result.expert_pending, result.expert_counts = HostCopy(result.expert_counts), None
            for opts in self.optimizers.values():
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
            for m in self.modules.values():  # frozen or skipped modules may still hold grads
                for part in m.parts:
                    part.zero_grad(set_to_none=True)
            for schedulers in self.schedulers.values():
                schedulers.step()
        if not cfg.training.skip_nonfinite_steps:  # that mode has read the results already
            # Copied at the step's end, so reading it later also means the step is done.
            result.pending = HostCopy(reduced)
        result.memory_gib = memory_gib(self.device)  # the peak so far: a host-side allocator count
        result.alloc_retries = alloc_retries(self.device)  # so far, likewise

    def train_step(self, step: int) -> StepResult:
        """Queue one step; its results are read by `read_step`. A step `metrics.timeline_steps`
        lists is recorded on this rank's timeline, and waited for at its end (`Timeline.end`)."""
        recorded = step + 1 in self.cfg.metrics.timeline_steps
        if recorded:
            self.timeline.begin()
        result = self.forward_backward(step)
        self.optimizer_step(step, result)
        if recorded:
            self.timeline.end()
        return result

    def evaluate(self, step: int) -> float:
        """Validation loss: the mean over `validation.steps` held-out batches of each batch's
        token-mean loss, forward-only through the same schedule and bridges as training (so
        every layout gives the single-rank value). The batches are the same at every
        evaluation, so values compare across steps. Every rank calls this (world reductions)."""
        total = 0.0
        for k in range(self.cfg.validation.steps):
            data = self.feed.load(k, "validation")
            tokens = self.global_loss_tokens(data)
            loss_local = self.runner.run(data, tokens, train=False)
            (loss,) = world_sum([float(loss_local) if self.feed.is_loss_rank else 0.0], self.host_group)
            total += loss
        return total / self.cfg.validation.steps

    # ---- metrics -----------------------------------------------------------------------------

    def step_metrics(self, step: int, result: StepResult, step_time_s: float, issue_s: float) -> dict:
        """The record of step `step` once `read_step` has read it: world reductions of host
        values (every rank calls this); rank 0 gets the record. `step_time_s`: this rank's mean
        step time over the logging window (`StepClock`); `issue_s`: its mean host time to queue a
        step's work over the same window (`host_issue_s`; near `step_time_s`: host-bound, or
        waiting on a full launch queue behind a busy device). The record has the world maxes."""
        cfg, topo = self.cfg, self.topo
        names = list(cfg.modules)
        flops_local = []
        for name in names:
            f = 0.0
            # Each encoder dp replica counts its own samples' images, once (on its tp 0 rank).
            if name in self.modules and name != cfg.language_name and topo.coords(name)["tp"] == 0:
                for batch in result.data.images.get(name, []):
                    f += sum(self.flop_counters[name].flops_per_image(*im.shape[-2:])
                             for im in batch.images[name])
            flops_local.append(f)
        # Of this step, not accumulated since the last logged step.
        timing = result.timing
        lm_place = topo.placements[cfg.language_name]
        bubble = [timing.bubble_s, timing.bubble_fraction] if cfg.language_name in self.modules else [0.0, 0.0]
        mem = [result.memory_gib if n in self.modules else 0.0 for n in names]
        retries = [float(result.alloc_retries) if n in self.modules else 0.0 for n in names]
        sums = world_sum(flops_local + bubble, self.host_group)
        maxes = world_max(mem + retries + [issue_s, timing.bridge_wait_s, step_time_s], self.host_group)
        step_time = maxes[-1]
        peak = peak_flops(self.device, cfg.metrics.peak_tflops)
        tokens = cfg.training.global_batch_size * cfg.training.seq_len
        record = {"step": step + 1, "loss": result.loss, "grad_norm": result.grad_norm,
                  "lr": self.lr_at(step), "tokens_per_s": tokens / step_time, "step_time_s": step_time,
                  "host_issue_s": maxes[-3],
                  "bridge_wait_s": maxes[-2], "loss_tokens": result.global_tokens,
                  # Mean over the language model's ranks; 0 without pipeline parallelism.
                  "bubble_s": sums[-2] / lm_place.size, "bubble_fraction": sums[-1] / lm_place.size,
                  "bubble_fraction_theory": theoretical_bubble_fraction(
                      lm_place.pp, topo.n_microbatches, cfg.parallelism.stages_per_rank),
                  "modules": {}}
        for i, name in enumerate(names):
            size = topo.placements[name].size
            if name == cfg.language_name:
                flops = self.flop_counters[name].flops_per_token(cfg.training.seq_len) * tokens
            else:
                flops = sums[i]
            record["modules"][name] = {
                # None (JSON null) where no peak is known (CPU): a 0 would read as a measurement.
                "mfu": flops / (step_time * size * peak) if peak > 0 else None,
                "tflops_per_device": flops / step_time / size / 1e12,
                "memory_gib": maxes[i],
                # The most of any of the module's ranks (a colocated rank's count is shared).
                "alloc_retries": int(maxes[len(names) + i]),
            }
        record.update(self.feed.metrics(result.data, result.data_counts))
        if result.expert_pending is not None:
            record.update(self.expert_load.metrics(result.expert_pending.values()))
        return record


def build_trainer(cfg: JobConfig, args: dict, placements: dict, dataset: MockImageCaption | ImageTextDataset,
                  device: torch.device, host_group: dist.ProcessGroup) -> Trainer:
    """Everything one rank holds, after `init_distributed` (which returns `host_group`)."""
    topo = build_topology(cfg, placements, device.type)
    lm_name, lm_place = cfg.language_name, placements[cfg.language_name]
    compute_dtype = COMPUTE_DTYPES[cfg.training.mixed_precision]
    lm_here = lm_name in topo.my_modules
    lm_first = lm_here and topo.is_first_stage(lm_name)
    # The encoders first: the language model's first stage is built holding what it merges, which
    # a colocated rank computes with its own encoders.
    built = build_modules(cfg, args, topo, device, names=list(cfg.encoders))
    roles = {}
    for name, m in cfg.encoders.items():
        enc_here = name in topo.my_modules
        if not (enc_here or lm_first):
            continue
        bridge = None
        if not topo.colocated:
            bridge = Bridge(encoder=placements[name], language=lm_place, rank=topo.rank,
                            slots_per_microbatch=cfg.training.micro_batch_size * lm_place.dp,
                            hidden=args[lm_name].dim, dtype=compute_dtype, device=device)
        roles[name] = EncoderRole(module=built.get(name), frozen=m.frozen, placeholder_id=m.placeholder_id,
                                  cell=args[name].patch_size * args[name].pixel_shuffle, bridge=bridge)
    # Ranks line up on one clock only when a step is recorded: measuring it is a world exchange.
    timeline = Timeline(device, host_clock_offset(host_group) if cfg.metrics.timeline_steps else 0.0)
    embeddings = None
    if lm_first:
        embeddings = EncoderEmbeddings(roles=roles, language=lm_name, device=device, timeline=timeline,
                                       zero_embeddings=cfg.training.zero_encoder_embeddings)
    built.update(build_modules(cfg, args, topo, device, names=[lm_name], embeddings=embeddings))
    modules = {name: built[name] for name in topo.my_modules}  # in config order, as everything iterates
    fused_loss = uses_fused_loss(cfg, lm_place)
    pp_group = stage_shapes = None
    if lm_here and lm_place.pp > 1:
        pp_group = topo.meshes[lm_name]["pp"].get_group()
        stage_shapes = _stage_shapes(cfg, args[lm_name], lm_place, modules[lm_name], compute_dtype,
                                     fused_loss=fused_loss)
    runner = StepRunner(modules=modules, encoders=roles, embeddings=embeddings, timeline=timeline,
                        language=lm_name if lm_here else None, n_microbatches=topo.n_microbatches,
                        schedule_name=cfg.parallelism.pipeline_schedule, pp_group=pp_group, device=device,
                        host_group=host_group, lm_pp=lm_place.pp, stage_shapes=stage_shapes,
                        fused_loss=fused_loss, loss_parallel=lm_place.tp > 1 and lm_place.pp == 1)
    optimizers = build_optimizers(cfg, modules, device)
    with torch.device("meta"):  # FLOP formulas need the module objects, not their weights
        flop_counters = {n: build_from_args(args[n]) for n in cfg.modules}
    plan = SamplePlan(global_batch_size=cfg.training.global_batch_size,
                      micro_batch_size=cfg.training.micro_batch_size, language_dp=lm_place.dp)
    feed = DataFeed(cfg=cfg, topo=topo, dataset=dataset, plan=plan,
                    patch_sizes={n: args[n].patch_size for n in cfg.encoders}, host_group=host_group)
    lm_args = args[lm_name]
    expert_load = ExpertLoad(lm_args.layer_pattern, lm_args.n_routed_experts,
                             modules[lm_name].parts if lm_here else [], lm_args.moe_bias_update_rate,
                             frozen=cfg.modules[lm_name].frozen, device=device)
    return Trainer(cfg=cfg, topo=topo, device=device, host_group=host_group, modules=modules, runner=runner,
                   feed=feed, optimizers=optimizers, schedulers=build_schedulers(cfg, optimizers),
                   flop_counters=flop_counters, lr_at=language_lr_schedule(cfg), expert_load=expert_load,
                   timeline=timeline)


def _stage_shapes(cfg: JobConfig, lm_args, place, lm: BuiltModule, dtype: torch.dtype, *,
                  fused_loss: bool) -> dict:
    """Static input/output metadata per stage, so pipelining skips shape inference (which would
    run the first stage's forward, bridge receive included, on meta tensors)."""
    mbs, seq = cfg.training.micro_batch_size, cfg.training.seq_len
    local_seq = seq // place.tp if place.tp > 1 else seq
    meta = torch.device("meta")
    # requires_grad marks the activations (and so their gradients) that stages exchange.
    hidden = torch.empty(mbs, local_seq, lm_args.dim, dtype=dtype, device=meta, requires_grad=True)
    shapes = {}
    for sid in lm.stage_ids:
        inputs = ((torch.empty(mbs, seq, dtype=torch.int64, device=meta),
                   torch.empty(mbs, dtype=torch.int64, device=meta)) if sid == 0 else (hidden,))
        output = hidden
        if sid == lm.n_stages - 1:
            # The last stage ends in the summed float32 loss (fused), or in the logits.
            output = (torch.empty((), dtype=torch.float32, device=meta, requires_grad=True) if fused_loss
                      else torch.empty(mbs, seq, lm_args.vocab_size, dtype=dtype, device=meta, requires_grad=True))
        shapes[sid] = {"input_args": inputs, "output_args": output}
    return shapes
