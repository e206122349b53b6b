"""The Trainer: what one rank holds (modules, optimizers, schedulers, bridges, schedule, data)
and one training step on it: load this rank's data -> forward/backward of every micro-batch ->
global loss and gradient norm -> clip, optimizer and LR steps, all queued on the device without
reading anything back -> later, `read_step` (the step's loss, gradient norm and stop flag) and
`step_metrics` (world reductions of host values over the host group).
`build_trainer` puts it together after the process group exists; `titan_mimo/train.py` runs it.
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from titan_mimo.bridge import Bridge
from titan_mimo.build import COMPUTE_DTYPES, BuiltModule, build_modules
from titan_mimo.config import JobConfig
from titan_mimo.data.build import build_local_dataset
from titan_mimo.data.dataset import ImageTextDataset
from titan_mimo.data.loader import Roles, StepLoader, load_roles
from titan_mimo.data.mock import EncoderSpec, MockImageCaption
from titan_mimo.data.plan import SamplePlan
from titan_mimo.distributed import world_max, world_sum, world_sum_
from titan_mimo.metrics import alloc_retries, memory_gib, peak_flops
from titan_mimo.models import build_from_args
from titan_mimo.schedule import EncoderRole, StepData, StepRunner, theoretical_bubble_fraction
from titan_mimo.step import (build_optimizers, build_schedulers, clip_coefficient, count_loss_tokens,
                             language_lr_schedule, local_grad_sq, scale_grads)
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


def build_dataset(cfg: JobConfig, args: dict) -> MockImageCaption | ImageTextDataset:
    if cfg.data.dataset == "local":
        return build_local_dataset(cfg, args)
    lm_args = args[cfg.language_name]
    encoders = [EncoderSpec(name=n, placeholder_id=m.placeholder_id,
                            cell=args[n].patch_size * args[n].pixel_shuffle, channels=args[n].in_channels)
                for n, m in cfg.encoders.items()]
    return MockImageCaption(seed=cfg.training.seed, seq_len=cfg.training.seq_len,
                            vocab_size=lm_args.vocab_size, pad_id=cfg.data.pad_id, encoders=encoders,
                            image_sizes=cfg.data.image_sizes, num_values=cfg.data.num_values,
                            text_only_fraction=cfg.data.text_only_fraction)


@dataclass(kw_only=True)
class Trainer:
    cfg: JobConfig
    topo: Topology
    device: torch.device
    host_group: dist.ProcessGroup
    """World group for reductions of host values (gloo; `init_distributed`)."""
    modules: dict[str, BuiltModule]
    runner: StepRunner
    dataset: MockImageCaption | ImageTextDataset
    plan: SamplePlan
    args: dict
    optimizers: dict
    """module -> one AdamW per part this rank holds (trainable modules only)."""
    schedulers: dict
    """module -> torchtitan LR scheduler container over that module's optimizers."""
    flop_counters: dict
    """Meta-device models per module, for their FLOP formulas."""
    lr_at: object
    """step -> the language module's LR (for metrics)."""
    tokens_seen: int = 0
    """Tokens (samples x seq_len) of every completed step, restored on resume."""
    stop_signal: str = ""
    """Name of a stop signal this rank received; it rides on the next step's reduction, so every
    rank learns of it when that step's results are read (`titan_mimo/train.py` says when)."""
    loader: StepLoader | None = None
    """Local data: the worker-process loader of training steps (built on first use)."""
    data_counts: dict = field(default_factory=lambda: {"skipped": 0, "blank": 0})
    """Records skipped and images blanked in this process's training steps (for metrics)."""
    _mock_ahead: tuple[int, Future] | None = field(default=None, init=False, repr=False)
    """Mock data: the next training step's (step, pending load_roles) from a background thread."""
    _mock_pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    # ---- data --------------------------------------------------------------------------------

    def data_roles(self) -> Roles:
        """What this rank loads: text on first/last language stages (middle stages take hidden
        states from their neighbours: no data), images on encoder ranks."""
        topo, lm = self.topo, self.cfg.language_name
        text = None
        if lm in topo.my_modules and (topo.is_first_stage(lm) or topo.is_last_stage(lm)):
            text = (topo.placements[lm].dp, topo.dp_rank(lm))
        mine = [n for n in self.cfg.encoders if n in topo.my_modules]
        balance = 0
        if self.cfg.data.balance_patches and self.cfg.encoders:
            # Colocated, each rank encodes the images of its language dp slots.
            balance = topo.placements[lm if topo.colocated else next(iter(self.cfg.encoders))].dp
        return Roles(text=text, text_with_images=topo.colocated,
                     images={} if topo.colocated else {n: (topo.placements[n].dp, topo.dp_rank(n)) for n in mine},
                     colocated_encoders=tuple(mine) if topo.colocated else (), balance_dp=balance)

    def _step_loader(self) -> StepLoader | None:
        """Worker-process loader of training steps (local data only; mock data is generated in
        the training process)."""
        if self.cfg.data.dataset == "mock":
            return None
        if self.loader is None:
            # The loss ranks together see every sample once: they report bad records.
            self.dataset.verbose = self._is_loss_rank()
            roles = self.data_roles()
            workers = self.cfg.data.num_workers if roles.text or roles.images else 0
            self.loader = StepLoader(self.dataset, self.plan, roles, self.cfg.training.steps, workers,
                                     self.cfg.data.prefetch_steps)
        return self.loader

    def load_step(self, step: int, split: str) -> StepData:
        """Only what this rank's roles need: text on language ranks, images on encoder ranks."""
        loader = self._step_loader() if split == "train" else None
        if loader is not None:
            text, images = loader.get(step)
        elif split == "train":
            text, images = self._mock_train_step(step)
        else:
            text, images = load_roles(self.dataset, self.plan, self.data_roles(), step, split)
        if split == "train":  # each sample counted once: on the loss rank / encoder tp 0 ranks
            if self._is_loss_rank():
                self.data_counts["skipped"] += sum(b.skipped for b in text)
            for name, batches in images.items():
                if name in self.modules and self.topo.coords(name)["tp"] == 0:
                    self.data_counts["blank"] += sum(b.blank_images for b in batches)
        return StepData(text=text, images=images)

    def _mock_train_step(self, step: int):
        """Mock training data, generated one step ahead in a background thread: the images'
        noise (tens of ms per 1024^2 image on the CPU) is then drawn while the device runs the
        previous step instead of in front of it. Every sample comes from its own seeded
        generator, so a thread changes no value."""
        def load(s: int):
            return load_roles(self.dataset, self.plan, self.data_roles(), s, "train")
        ahead, self._mock_ahead = self._mock_ahead, None
        text, images = ahead[1].result() if ahead is not None and ahead[0] == step else load(step)
        if step + 1 < self.cfg.training.steps:
            if self._mock_pool is None:
                self._mock_pool = ThreadPoolExecutor(1, thread_name_prefix="titan_mimo-mock-data")
            self._mock_ahead = (step + 1, self._mock_pool.submit(load, step + 1))
        return text, images

    def data_state_dict(self) -> dict:
        """This rank's data-loader state for checkpoints, plain Python objects: the loader's
        position and the skip counters (mock data is indexed by step: none)."""
        loader = self._step_loader()
        return {} if loader is None else {"loader": loader.state_dict(), "counts": dict(self.data_counts)}

    def load_data_state_dict(self, state: dict) -> None:
        loader = self._step_loader()
        if loader is None:
            if state:
                raise ValueError(f"mock data has no loader state, but the checkpoint holds {sorted(state)}")
            return
        if state:
            loader.load_state_dict(state["loader"])
            self.data_counts.update(state["counts"])

    def data_metrics(self, data: StepData, counts: dict) -> dict:
        """Every rank calls this (two world reductions): records skipped as bad or too long and
        images blanked since this process started (training split, `counts`: `data_counts` as
        they were after the step's data was loaded), and per encoder the patch
        imbalance of this step over the encoder's dp ranks: the mean over micro-batches of
        max / mean patches per rank (1.0 = balanced)."""
        encoders, patches, counted = list(self.cfg.encoders), [], []
        for name in encoders:
            holds = name in self.modules and self.topo.coords(name)["tp"] == 0 and name in data.images
            patch = self.args[name].patch_size
            per_mb = [0.0] * self.plan.n_microbatches
            if holds:
                for mb, batch in enumerate(data.images[name]):
                    per_mb[mb] = sum(im.shape[-2] * im.shape[-1] / patch**2 for im in batch.images[name])
            patches += per_mb
            counted.append(float(holds))
        sums = world_sum([counts["skipped"], counts["blank"]] + patches + counted, self.host_group)
        maxes = world_max(patches, self.host_group)
        n_mb = self.plan.n_microbatches
        out = {"skipped_samples": int(sums[0]), "blank_images": int(sums[1])}
        for e, name in enumerate(encoders):
            ranks = sums[2 + len(patches) + e]
            ratios = [maxes[e * n_mb + mb] / (sums[2 + e * n_mb + mb] / ranks)
                      for mb in range(n_mb) if sums[2 + e * n_mb + mb] > 0]
            out[f"patch_imbalance/{name}"] = sum(ratios) / len(ratios) if ratios else 1.0
        return out

    def _is_loss_rank(self) -> bool:
        lm = self.cfg.language_name
        return (lm in self.topo.my_modules and self.topo.is_last_stage(lm)
                and self.topo.coords(lm)["tp"] == 0)

    def global_loss_tokens(self, data: StepData) -> float:
        local = count_loss_tokens([b.labels for b in data.text]) if self._is_loss_rank() else 0
        (total,) = world_sum([local], self.host_group)
        if total == 0:
            raise ValueError("a step has no loss tokens (every label is -100); check the data")
        return total

    # ---- one step ----------------------------------------------------------------------------

    def forward_backward(self, step: int) -> dict:
        """Forward and backward of every micro-batch, then the step's one world reduction of
        (loss, squared gradient norm, stop flag), queued on the device and not yet read. The
        loss-token count is reduced on the host first (the loss divides by it)."""
        data = self.load_step(step, "train")
        counts = dict(self.data_counts)
        global_tokens = self.global_loss_tokens(data)
        loss_local = self.runner.run(data, global_tokens, train=True)
        grad_sq = sum(local_grad_sq(m, self.topo.placements[n].size // self.topo.placements[n].pp, self.device)
                      for n, m in self.modules.items())
        # The stop flag rides on the step's one reduction, so all ranks stop at the same step.
        # torch.full, not torch.tensor: a copy from host memory would wait for the device.
        stop = torch.full((), float(bool(self.stop_signal)), dtype=torch.float64, device=self.device)
        reduced = world_sum_(torch.stack([loss_local if self._is_loss_rank() else torch.zeros_like(stop),
                                          grad_sq, stop]))
        # The step's record is built later (after the next step is queued): keep what it needs.
        return {"reduced": reduced, "global_tokens": global_tokens, "data": data, "data_counts": counts,
                "timing": self.runner.train_timing}

    @staticmethod
    def _read(out: dict) -> None:
        loss, grad_sq, stop = out.pop("result").values()
        out.update(loss=loss, grad_norm=math.sqrt(grad_sq), stop=stop > 0)

    def read_step(self, step: int, out: dict) -> None:
        """Wait for step `step`'s (loss, squared gradient norm, stop flag) and read them into
        `out` ("loss", "grad_norm", "stop"); a no-op once read. Without `skip_nonfinite_steps`
        a non-finite loss or norm raises NonFiniteError: call this before saving the step."""
        if "result" in out:
            self._read(out)
        loss, grad_norm = out["loss"], out["grad_norm"]
        if not self.cfg.training.skip_nonfinite_steps and not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise NonFiniteError(f"step {step + 1}: non-finite loss {loss} or grad norm {grad_norm} "
                                 "(the run stops without saving this step; set "
                                 "training.skip_nonfinite_steps = true to skip such steps)")

    def optimizer_step(self, step: int, out: dict) -> None:
        """Clip with the one global coefficient, step every module's optimizer and schedule.

        The coefficient is computed on the device from the queued reduction, so the optimizer
        steps are issued without the host waiting for the backward, and nothing is read back:
        `read_step` reads the step's results later, typically after the next step is queued.
        With `skip_nonfinite_steps` the host must see them before stepping the optimizers, so
        that mode waits for the device's backward in every step."""
        cfg = self.cfg
        reduced = out.pop("reduced")
        coef = clip_coefficient(reduced[1].sqrt(), cfg.training.max_norm)
        if cfg.training.skip_nonfinite_steps:
            out["result"] = HostCopy(reduced)
            self._read(out)
            loss, grad_norm = out["loss"], out["grad_norm"]
            if math.isfinite(loss) and math.isfinite(grad_norm):
                scale_grads(self.modules, coef)
                self._step_optimizers()
            elif self.topo.rank == 0:
                print(f"titan_mimo: step {step + 1}: non-finite loss {loss} or grad norm {grad_norm}: "
                      "step skipped", file=sys.stderr, flush=True)
        else:
            scale_grads(self.modules, coef)
            self._step_optimizers()
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
            out["result"] = HostCopy(reduced)
        out["memory_gib"] = memory_gib(self.device)  # the peak so far: a host-side allocator count
        out["alloc_retries"] = alloc_retries(self.device)  # so far, likewise

    def _step_optimizers(self) -> None:
        for opts in self.optimizers.values():
            for opt in opts:
                opt.step()

    def train_step(self, step: int) -> dict:
        """Queue one step; its results are read by `read_step`."""
        out = self.forward_backward(step)
        self.optimizer_step(step, out)
        return out

    def evaluate(self, step: int) -> float:
        """Validation loss: the mean over `validation.steps` held-out batches of each batch's
        token-mean loss, forward-only through the same schedule and bridges as training (so
        every layout gives the single-rank value). The batches are the same at every
        evaluation, so values compare across steps. Every rank calls this (world reductions)."""
        total = 0.0
        for k in range(self.cfg.validation.steps):
            data = self.load_step(k, "validation")
            tokens = self.global_loss_tokens(data)
            loss_local = self.runner.run(data, tokens, train=False)
            (loss,) = world_sum([float(loss_local) if self._is_loss_rank() else 0.0], self.host_group)
            total += loss
        return total / self.cfg.validation.steps

    # ---- metrics -----------------------------------------------------------------------------

    def step_metrics(self, step: int, out: dict, step_time_s: float) -> dict:
        """The record of step `step` once `read_step` has read it: world reductions of host
        values (every rank calls this); rank 0 gets the record. `step_time_s`: this rank's mean
        step time over the logging window (`StepClock`); the record has the world max."""
        cfg, topo = self.cfg, self.topo
        names = list(cfg.modules)
        flops_local = []
        for name in names:
            f = 0.0
            # Each encoder dp replica counts its own samples' images, once (on its tp 0 rank).
            if name in self.modules and name != cfg.language_name and topo.coords(name)["tp"] == 0:
                for batch in out["data"].images.get(name, []):
                    f += sum(self.flop_counters[name].flops_per_image(*im.shape[-2:])
                             for im in batch.images[name])
            flops_local.append(f)
        # Of this step, not accumulated since the last logged step.
        timing = out["timing"]
        lm_place = topo.placements[cfg.language_name]
        bubble = [timing.bubble_s, timing.bubble_fraction] if cfg.language_name in self.modules else [0.0, 0.0]
        mem = [out["memory_gib"] if n in self.modules else 0.0 for n in names]
        retries = [float(out["alloc_retries"]) if n in self.modules else 0.0 for n in names]
        sums = world_sum(flops_local + bubble, self.host_group)
        maxes = world_max(mem + retries + [timing.bridge_wait_s, step_time_s], self.host_group)
        step_time = maxes[-1]
        peak = peak_flops(self.device, cfg.metrics.peak_tflops)
        tokens = cfg.training.global_batch_size * cfg.training.seq_len
        record = {"step": step + 1, "loss": out["loss"], "grad_norm": out["grad_norm"],
                  "lr": self.lr_at(step), "tokens_per_s": tokens / step_time, "step_time_s": step_time,
                  "bridge_wait_s": maxes[-2], "loss_tokens": out["global_tokens"],
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
                "mfu": flops / (step_time * size * peak) if peak > 0 else 0.0,
                "tflops_per_device": flops / step_time / size / 1e12,
                "memory_gib": maxes[i],
                # The most of any of the module's ranks (a colocated rank's count is shared).
                "alloc_retries": int(maxes[len(names) + i]),
            }
        record.update(self.data_metrics(out["data"], out["data_counts"]))
        return record


def build_trainer(cfg: JobConfig, args: dict, placements: dict, dataset: MockImageCaption,
                  device: torch.device, host_group: dist.ProcessGroup) -> Trainer:
    """Everything one rank holds, after `init_distributed` (which returns `host_group`)."""
    topo = build_topology(cfg, placements, device.type)
    modules = build_modules(cfg, args, topo, device)
    lm_name, lm_place = cfg.language_name, placements[cfg.language_name]
    compute_dtype = COMPUTE_DTYPES[cfg.training.mixed_precision]
    lm_here = lm_name in topo.my_modules
    lm_first = lm_here and topo.is_first_stage(lm_name)
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
        roles[name] = EncoderRole(module=modules.get(name), frozen=m.frozen, placeholder_id=m.placeholder_id,
                                  cell=args[name].patch_size * args[name].pixel_shuffle, bridge=bridge)
    tp_mesh = pp_group = stage_shapes = None
    if lm_here:
        mesh = topo.meshes[lm_name]
        tp_mesh = mesh["tp"] if lm_place.tp > 1 else None
        if lm_place.pp > 1:
            pp_group = mesh["pp"].get_group()
            stage_shapes = _stage_shapes(cfg, args[lm_name], lm_place, modules[lm_name], compute_dtype,
                                         head_in_loss=uses_fused_loss(cfg, lm_place))
    runner = StepRunner(modules=modules, encoders=roles, language=lm_name if lm_here else None,
                        n_microbatches=topo.n_microbatches, schedule_name=cfg.parallelism.pipeline_schedule,
                        tp_mesh=tp_mesh, pp_group=pp_group, device=device, host_group=host_group,
                        lm_pp=lm_place.pp,
                        stage_shapes=stage_shapes, zero_embeddings=cfg.training.zero_encoder_embeddings,
                        fused_loss=uses_fused_loss(cfg, lm_place))
    optimizers = build_optimizers(cfg, modules, device)
    with torch.device("meta"):  # FLOP formulas need the module objects, not their weights
        flop_counters = {n: build_from_args(args[n]) for n in cfg.modules}
    plan = SamplePlan(global_batch_size=cfg.training.global_batch_size,
                      micro_batch_size=cfg.training.micro_batch_size, language_dp=lm_place.dp)
    return Trainer(cfg=cfg, topo=topo, device=device, host_group=host_group, modules=modules, runner=runner, dataset=dataset,
                   plan=plan, args=args, optimizers=optimizers,
                   schedulers=build_schedulers(cfg, optimizers), flop_counters=flop_counters,
                   lr_at=language_lr_schedule(cfg))


def _stage_shapes(cfg: JobConfig, lm_args, place, lm: BuiltModule, dtype: torch.dtype, *,
                  head_in_loss: bool) -> dict:
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
        # With the chunked loss the last stage hands the loss final-norm hidden states, not logits.
        output = (torch.empty(mbs, seq, lm_args.vocab_size, dtype=dtype, device=meta, requires_grad=True)
                  if sid == lm.n_stages - 1 and not head_in_loss else hidden)
        shapes[sid] = {"input_args": inputs, "output_args": output}
    return shapes
