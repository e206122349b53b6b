"""One step's forward and backward over all micro-batches, for every role this rank plays.

- Colocated: every module on this rank; the language model's first stage runs the encoders
  itself (no bridge) and autograd runs through both.
- Language ranks: the stages are `titan_mimo/stages.py`'s modules; pp = 1 runs micro-batches in a
  plain loop, pp > 1 a `torch.distributed.pipelining` schedule (GPipe, 1F1B, Interleaved1F1B).
  Either way the first stage takes each micro-batch's image embeddings from the bridge
  (`EncoderEmbeddings`) when that micro-batch's forward starts, and the bridge returns their
  gradient when that micro-batch's backward reaches it; the last stage ends in the loss.
- Encoder ranks: a 1F1B loop across the boundary: up to `in_flight` forwards are sent ahead, then
  each arriving gradient is back-propagated before the next forward, so encoder forward of i+1
  overlaps the language model's work on i and encoder backward of i starts as soon as its
  gradient returns.
- Evaluation (`train=False`) runs the same path forward-only under `no_grad`: no gradient
  crosses the bridge, so encoders send every micro-batch's embeddings without waiting.

Each run records where this rank's time went (`StepTiming`): waiting on the bridge, and, on
pipelined language ranks, the pipeline bubble = the schedule's wall time minus the time spent
inside this rank's own stage work (forward, backward, gradient reduction). On a recorded step
each of those is also a span of the step's `Timeline`, per module and micro-batch.

Legend: B samples of a micro-batch on this rank, S sequence, D language hidden, N image tokens.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from titan_mimo.build import BuiltModule
from titan_mimo.compat import first_stage_forwards_ahead, time_stage_work
from titan_mimo.data.batch import IGNORE_INDEX, StepData
from titan_mimo.distributed import world_max
from titan_mimo.embeddings import EncoderEmbeddings, EncoderRole, encode
from titan_mimo.models.common import to_device
from titan_mimo.timing import SpanClock, StepTiming, Timeline


def last_backward(model, module: BuiltModule, is_last: bool) -> None:
    """Before a micro-batch's backward in the loops this file runs itself (the encoders', and
    the language model's without pipelining): FSDP reduces gradients only after the step's last
    one, and a module that keeps its gathered parameters (`keeps_gathered`) keeps them until
    then, as torch.distributed.pipelining does for its stages. Nothing for a module without
    FSDP (`sharded` off): its gradients accumulate in place."""
    if not module.sharded:
        return
    model.set_requires_gradient_sync(is_last)
    if module.keeps_gathered:
        model.set_reshard_after_backward(is_last)


SCHEDULES = {"GPipe": ScheduleGPipe, "1F1B": Schedule1F1B, "Interleaved1F1B": ScheduleInterleaved1F1B}

STAGE_WORK_KINDS = {"forward_one_chunk": "forward", "backward_one_chunk": "backward",
                    "backward_weight_one_chunk": "backward_weight", "perform_reduce_grad": "grad_reduce"}
"""The timeline's kind of each stage work call a pipelining schedule makes (`time_stage_work`)."""


def theoretical_bubble_fraction(lm_pp: int, n_microbatches: int, stages_per_rank: int = 1) -> float:
    """Idle share of a pipeline rank with equal stage times and free communication:
    (p - 1) / (v m + p - 1) for p ranks, m micro-batches, v stages per rank (GPipe and 1F1B:
    v = 1; Interleaved1F1B divides the ramp by v). 0 without pipelining."""
    if lm_pp <= 1:
        return 0.0
    return (lm_pp - 1) / (stages_per_rank * n_microbatches + lm_pp - 1)


def encoder_lead(schedule_name: str, lm_pp: int, n_microbatches: int, first_stage_ahead: int | None = None) -> int:
    """How many micro-batches an encoder runs forward before waiting for the oldest gradient.

    It must cover how far the language model's first stage runs forwards ahead of its backwards
    (before the backward of micro-batch i it has run at most i + ahead forwards), or the two
    wait on each other: 1 with pp = 1, pp with 1F1B (torch's warm-up on stage 0), every
    micro-batch with GPipe; multi-stage schedules (Interleaved1F1B) pass `first_stage_ahead`,
    read from their own action list. One more than the minimum lets encoder forward of i+1
    overlap the language model's work on i.
    """
    if lm_pp == 1:
        need = 1
    elif first_stage_ahead is not None:
        need = first_stage_ahead
    elif schedule_name == "1F1B":
        need = lm_pp
    else:
        need = n_microbatches
    return min(n_microbatches, need + 1)


def cross_entropy_sum(logits_BSV: Tensor, labels_BS: Tensor) -> Tensor:
    return F.cross_entropy(logits_BSV.flatten(0, 1).float(), labels_BS.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


class StepRunner:
    """Runs forward+backward (or forward only) of one step on this rank."""

    def __init__(self, *, modules: dict[str, BuiltModule], encoders: dict[str, EncoderRole],
                 embeddings: EncoderEmbeddings | None, language: str | None, n_microbatches: int,
                 schedule_name: str, pp_group, device: torch.device, host_group, lm_pp: int,
                 stage_shapes: dict | None, timeline: Timeline, fused_loss: bool = False,
                 loss_parallel: bool = False):
        self.modules, self.encoders, self.language = modules, encoders, language
        self.embeddings = embeddings
        """What the language model's first stage on this rank merges (None elsewhere)."""
        self.n_mb, self.device = n_microbatches, device
        self.fused_loss = fused_loss
        """The last stage ends in the chunked head + cross-entropy (it gets the labels), rather
        than in logits for the cross-entropy here."""
        self.loss_parallel = loss_parallel
        """Without pipelining under TP: the head's logits stay sharded over the vocabulary and the
        cross-entropy runs loss-parallel."""
        self.global_tokens = 1.0
        self.data = StepData()
        self.timing = StepTiming()
        """Of the last run; `train_timing` of the last training run."""
        self.train_timing = StepTiming()
        self._stage_clock, self._schedule_clock = SpanClock(device), SpanClock(device)
        self.timeline = timeline
        """Spans of a recorded step (`Trainer.train_step` starts and ends it); inert otherwise."""
        self._losses_run = 0
        """Micro-batches whose loss this run has computed (`_loss_fn`)."""
        self.schedule = None
        if language is not None:
            lm = modules[language]
            if lm.n_stages > 1:
                stages = [PipelineStage(part, sid, lm.n_stages, device, group=pp_group,
                                        **stage_shapes[sid])
                          for part, sid in zip(lm.parts, lm.stage_ids)]
                for stage in stages:
                    time_stage_work(stage, lambda work, mb, sid=stage.stage_index: self._stage_work(sid, work, mb))
                cls = SCHEDULES[schedule_name]
                self.schedule = cls(stages if len(stages) > 1 or cls is ScheduleInterleaved1F1B else stages[0],
                                    n_microbatches, scale_grads=False,
                                    loss_fn=self._normalised if fused_loss else self._loss_fn)
                self.holds_first = 0 in lm.stage_ids
                self.holds_last = lm.n_stages - 1 in lm.stage_ids
        # Only the language rank holding stage 0 can read a multi-stage schedule's action list;
        # one world max (every rank builds a StepRunner, in the same order) tells the encoders.
        ahead = -1
        if self.schedule is not None and self.holds_first:
            exact = first_stage_forwards_ahead(self.schedule)
            ahead = -1 if exact is None else exact
        (ahead,) = world_max([ahead], host_group)
        self.in_flight = encoder_lead(schedule_name, lm_pp, n_microbatches,
                                      None if ahead < 0 else int(ahead))
        """Encoder forwards sent ahead of the oldest returning gradient."""

    # ---- language side -----------------------------------------------------------------------

    # Losses are divided by the step's global loss-token count (one world all-reduce per step),
    # so the summed gradient over micro-batches, dp ranks and modules is the same in every layout.

    def _normalised(self, loss_sum: Tensor, _labels_BS: Tensor) -> Tensor:
        return loss_sum / self.global_tokens

    def _loss_fn(self, logits_BSV: Tensor, labels_BS: Tensor) -> Tensor:
        # The schedule computes each micro-batch's loss in micro-batch order.
        mb, self._losses_run = self._losses_run, self._losses_run + 1
        with self.timeline.span("loss", self.language, mb=mb):
            return cross_entropy_sum(logits_BSV, labels_BS) / self.global_tokens

    def _stage_loss(self, model, tokens_BS: Tensor, mb_B: Tensor, labels_BS: Tensor, mb: int) -> Tensor:
        if self.fused_loss:
            with self.timeline.span("forward", self.language, mb=mb, stage=0):
                loss_sum = model(tokens_BS, mb_B, labels_BS=labels_BS)
            return self._normalised(loss_sum, labels_BS)
        with self.timeline.span("forward", self.language, mb=mb, stage=0):
            logits_BSV = model(tokens_BS, mb_B)
        loss = self._loss_fn(logits_BSV, labels_BS)
        # Loss-parallel cross-entropy returns a replicated DTensor: every TP rank holds the sum.
        return loss.to_local() if isinstance(loss, DTensor) else loss

    @contextmanager
    def _stage_work(self, stage_id: int, work: str, mb: int | None):
        """One call of a pipelining schedule into stage `stage_id`'s own work (`time_stage_work`)."""
        with self._stage_clock.span(), self.timeline.span(STAGE_WORK_KINDS[work], self.language, mb=mb,
                                                          stage=stage_id):
            yield

    def _run_language(self, train: bool) -> Tensor:
        lm = self.modules[self.language]
        text = self.data.text
        if self.schedule is None:
            model = lm.parts[0]
            # TP without pipelining: the head's logits stay sharded over the vocabulary and the
            # cross-entropy (forward and backward) runs loss-parallel, never gathering them.
            vocab_parallel = loss_parallel if self.loss_parallel else nullcontext
            # Summed on the device, read once after the loop: reading each micro-batch's loss
            # would make the host wait for its backward before queueing the next forward.
            # float64, adding the float32 losses in micro-batch order: the sum a Python float
            # accumulator gives, bit for bit.
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            for mb, batch in enumerate(text):
                tokens = to_device(batch.tokens, self.device)
                mb_ids = torch.full((tokens.shape[0],), mb, device=self.device)
                labels = to_device(batch.labels, self.device)
                if train:
                    last_backward(model, lm, mb == self.n_mb - 1)
                    with vocab_parallel():
                        loss = self._stage_loss(model, tokens, mb_ids, labels, mb)
                        with self.timeline.span("backward", self.language, mb=mb, stage=0):
                            loss.backward()
                else:
                    with torch.no_grad(), vocab_parallel():
                        loss = self._stage_loss(model, tokens, mb_ids, labels, mb)
                loss_sum += loss.detach()
            return loss_sum
        args, kwargs = (), {}
        if self.holds_first:
            tokens = to_device(torch.cat([b.tokens for b in text]), self.device)
            mb_ids = torch.arange(self.n_mb, device=self.device).repeat_interleave(text[0].tokens.shape[0])
            args = (tokens, mb_ids)
        losses: list[Tensor] = []
        # The schedule keeps no outputs: the last stage's losses are all the step reads.
        kwargs = {"return_outputs": False}
        if self.holds_last:
            labels = to_device(torch.cat([b.labels for b in text]), self.device)
            # `target` is what the schedule hands its loss_fn per micro-batch; with the fused loss
            # the labels also go into the last stage, which ends in the summed loss.
            kwargs.update(target=labels, losses=losses)
            if self.fused_loss:
                kwargs["labels_BS"] = labels
        with self._schedule_clock.span(), self.timeline.span("schedule", self.language):
            if train:
                self.schedule.step(*args, **kwargs)
            else:
                # Pipelining's eval only skips the backward; no_grad also keeps it from building
                # graphs (and the bridge from arming its gradient send).
                with torch.no_grad():
                    self.schedule.eval(*args, **kwargs)
        # float32 sum in micro-batch order, then float64 (the value a Python float took before).
        if not losses:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        return sum(l.detach() for l in losses).double()

    # ---- encoder side ------------------------------------------------------------------------

    def _run_encoder(self, name: str, train: bool) -> None:
        role = self.encoders[name]
        model = role.module.parts[0]
        pending: deque[tuple[int, Tensor, list[int]]] = deque()
        needs_grad = train and not role.frozen

        def backward_oldest() -> None:
            mb, emb, rows = pending.popleft()
            with self.timeline.span("bridge_wait", name, mb=mb, what="gradients"):
                grad = role.bridge.recv_gradient(rows)
            with self.timeline.span("backward", name, mb=mb):
                last_backward(model, role.module, mb == self.n_mb - 1)
                emb.backward(grad.to(emb.dtype))

        for mb, batch in enumerate(self.data.images[name]):
            rows = (batch.tokens == role.placeholder_id).sum(1).tolist()
            with torch.set_grad_enabled(needs_grad), self.timeline.span("forward", name, mb=mb):
                emb = encode(role, batch.images[name], self.device)
            role.bridge.send_embeddings(emb, rows)
            if needs_grad:
                pending.append((mb, emb, rows))
                if len(pending) >= self.in_flight:
                    backward_oldest()
        while pending:
            backward_oldest()

    # ---- one step ----------------------------------------------------------------------------

    def run(self, data: StepData, global_tokens: float, train: bool = True) -> Tensor:
        """Forward (+ backward) of all micro-batches; returns this rank's loss contribution, a
        float64 scalar on the device (read it when the step's work is queued)."""
        self.data, self.global_tokens = data, global_tokens
        self._losses_run = 0
        if self.embeddings is not None:
            self.embeddings.begin(data)
        self.timing = StepTiming()
        self._stage_clock.reset()
        self._schedule_clock.reset()
        bridges = {name: role.bridge for name, role in self.encoders.items() if role.bridge is not None}
        wait0 = sum(b.stats.wait_s for b in bridges.values())
        t0 = time.perf_counter()
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for name, role in self.encoders.items():
            if role.bridge is not None and role.module is not None:
                self._run_encoder(name, train)
        if self.language is not None:
            loss = self._run_language(train)
        for name, bridge in bridges.items():
            with self.timeline.span("bridge_wait", name, what="sends"):
                bridge.wait_sends()
        self.timing.run_s = time.perf_counter() - t0
        self.timing.bridge_wait_s = sum(b.stats.wait_s for b in bridges.values()) - wait0
        self.timing.schedule = self._schedule_clock.take()
        self.timing.stage_work = self._stage_clock.take()
        if train:
            self.train_timing = self.timing
        return loss

