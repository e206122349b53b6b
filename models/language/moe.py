"""Nemotron-H's mixture-of-experts block (transformers' `NemotronHMoE`, Megatron's router with the
same settings): a sigmoid router whose correction bias steers the choice only, group-limited
top-k, non-gated squared-ReLU routed experts stored as 3-D weights, a shared expert every token
passes through, and an optional latent projection around the routed experts.

Load balancing as the reference does it: each router counts the tokens its experts received
(`tokens_per_expert`, while gradients are on: training forwards only); the trainer sums those
counts over the whole global batch and moves the correction bias by `rate * sign(mean - count)`
once per optimizer step (`update_correction_bias`), outside the gradient. The optional
sequence-level auxiliary loss is not added to the loss value: its gradient enters the backward
at the block's output (`AuxLossGradient`), scaled by `coeff / global loss tokens`, the
normalisation of the language loss, which the trainer sets once per step (`set_aux_loss_scale`).

A checkpointed block runs its forward twice (forward, recompute) and so counts its tokens twice;
every quantity derived from the counts is per layer and scale-invariant (the sign of
mean - count, max / mean load), so this changes nothing.

No parallelism here: expert parallelism is a ParallelStyle on `experts` (moe_parallel.py),
sequence-parallel routing a style on `gate` and `sequence_counts` (parallelize.py).

Shape legend: B batch, S this rank's sequence part, D model dim, I routed-expert input width
(D or moe_latent_size), T tokens (B*S), E routed experts, K experts per token, G expert groups,
R routed rows (T*K), F routed-expert hidden width.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common import INIT_STD, local_tensor
from .args import HybridLMArgs
from .mlp import MLP

__all__ = ["AuxLossGradient", "MoE", "RoutedExperts", "Router", "SequenceCounts", "route",
           "moe_layers", "set_aux_loss_scale", "update_correction_bias"]


def route(logits_TE: Tensor, bias_E: Tensor, *, top_k: int, n_group: int, topk_group: int,
          norm_topk_prob: bool, scaling: float) -> tuple[Tensor, Tensor, Tensor]:
    """Nemotron-H's routing of fp32 router logits: (scores_TE, experts_TK, gates_TK).

    sigmoid scores; the correction bias is added for choosing only; with n_group > 1 a group
    scores the sum of its top-2 biased scores and only the best `topk_group` groups stay
    eligible; then the top-k experts. The gates are the chosen experts' unbiased scores,
    normalised over the k (`norm_topk_prob`, + 1e-20 as the reference), times `scaling`.
    """
    scores_TE = logits_TE.sigmoid()
    choice_TE = scores_TE + bias_E
    if n_group > 1:
        t, e = choice_TE.shape
        group_TG = choice_TE.view(t, n_group, e // n_group).topk(2, dim=-1)[0].sum(dim=-1)
        best_groups = group_TG.topk(topk_group, dim=-1, sorted=False)[1]
        keep_TG = torch.zeros_like(group_TG, dtype=torch.bool).scatter_(1, best_groups, True)
        keep_TE = keep_TG.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)
        choice_TE = choice_TE.masked_fill(~keep_TE, float("-inf"))
    experts_TK = choice_TE.topk(top_k, dim=-1, sorted=False)[1]
    gates_TK = scores_TE.gather(1, experts_TK)
    if norm_topk_prob:
        gates_TK = gates_TK / (gates_TK.sum(dim=-1, keepdim=True) + 1e-20)
    return scores_TE, experts_TK, gates_TK * scaling


class Router(nn.Module):
    """The router's fp32 linear (no bias); holds the correction bias and the token counts.

    `forward` is the linear alone, a per-token map, so sequence parallelism can run it on each
    rank's tokens with a replicated weight (parallelize.py); the routing itself is `route`.
    """

    def __init__(self, dim: int, n_experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, dim))
        self.register_buffer("e_score_correction_bias", torch.zeros(n_experts))
        self.register_buffer("tokens_per_expert", torch.zeros(n_experts), persistent=False)
        """Tokens routed to each expert by this rank's training forwards since the last bias
        update (float32: exact up to 2^24 per step and expert)."""

    def forward(self, x_TD: Tensor) -> Tensor:
        # fp32 whatever the compute dtype (Nemotron-H and Megatron route in fp32): autocast
        # off, and the weight's FSDP unit gathers it in fp32 (parallelize.py).
        with torch.autocast(x_TD.device.type, enabled=False):
            return F.linear(x_TD.float(), self.weight.float())

    def init_param(self, name: str, t: Tensor, g: torch.Generator) -> None:
        nn.init.trunc_normal_(t, 0.0, INIT_STD, -2 * INIT_STD, 2 * INIT_STD, generator=g)

    def init_buffer(self, name: str, t: Tensor) -> None:
        t.zero_()


class RoutedExperts(nn.Module):
    """E non-gated squared-ReLU MLPs, down(relu(up(x))²), as 3-D weights [E, out, in].

    Input rows arrive grouped by expert (`counts_E` rows each, in expert order); with expert
    parallelism the style around this module hands it this rank's experts' rows and counts.
    """

    def __init__(self, n_experts: int, in_dim: int, hidden: int, backend: str):
        super().__init__()
        self.up_proj = nn.Parameter(torch.empty(n_experts, hidden, in_dim))
        self.down_proj = nn.Parameter(torch.empty(n_experts, in_dim, hidden))
        self.backend = backend

    def forward(self, x_RI: Tensor, counts_E: Tensor) -> Tensor:
        # Expert parallelism shards the weights (DTensors over the ep ranks); the rows here
        # are already this rank's experts'.
        up_EFI, down_EIF = local_tensor(self.up_proj), local_tensor(self.down_proj)
        if self.backend == "grouped_mm":
            return grouped_mm_experts(x_RI, counts_E, up_EFI, down_EIF)
        return looped_experts(x_RI, counts_E, up_EFI, down_EIF)

    def init_param(self, name: str, t: Tensor, g: torch.Generator) -> None:
        nn.init.trunc_normal_(t, 0.0, INIT_STD, -2 * INIT_STD, 2 * INIT_STD, generator=g)

    @staticmethod
    def forward_flops_per_row(in_dim: int, hidden: int) -> int:
        return 2 * 2 * in_dim * hidden


def looped_experts(x_RI: Tensor, counts_E: Tensor, up_EFI: Tensor, down_EIF: Tensor) -> Tensor:
    """The reference: one matmul pair per expert (reads the counts on the host)."""
    outs = [F.linear(F.relu(F.linear(x, up_EFI[e])).square(), down_EIF[e])
            for e, x in enumerate(x_RI.split(counts_E.tolist()))]
    return torch.cat(outs) if outs else x_RI.new_zeros(0, down_EIF.shape[1])


def grouped_mm_experts(x_RI: Tensor, counts_E: Tensor, up_EFI: Tensor, down_EIF: Tensor) -> Tensor:
    """The same math as `looped_experts` in two `torch._grouped_mm` calls (CUDA; no host sync:
    the group offsets stay on the device)."""
    if torch.is_autocast_enabled(x_RI.device.type):  # autocast does not cover _grouped_mm
        dtype = torch.get_autocast_dtype(x_RI.device.type)
        x_RI, up_EFI, down_EIF = x_RI.to(dtype), up_EFI.to(dtype), down_EIF.to(dtype)
    offsets = counts_E.cumsum(0, dtype=torch.int32)
    h_RF = torch._grouped_mm(x_RI, up_EFI.transpose(-2, -1), offs=offsets)
    # .to: autocast computes pow in fp32
    act_RF = F.relu(h_RF).square().to(h_RF.dtype)
    return torch._grouped_mm(act_RF, down_EIF.transpose(-2, -1), offs=offsets)


class SequenceCounts(nn.Module):
    """Identity on per-sequence expert counts [B, E]. Where a sequence is split over ranks
    (sequence parallelism), parallelize.py makes it the sum over those ranks, so the auxiliary
    loss sees whole sequences."""

    def forward(self, counts_BE: Tensor) -> Tensor:
        return counts_BE


class AuxLossGradient(torch.autograd.Function):
    """Identity on the block output whose backward also sends `scale` (a device scalar) as the
    gradient of the auxiliary-loss sum: the loss enters the gradient, not the loss value."""

    @staticmethod
    def forward(ctx, out: Tensor, aux_sum: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        ctx.aux_dtype = aux_sum.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (scale,) = ctx.saved_tensors
        return grad_out, scale.to(ctx.aux_dtype), None


class MoE(nn.Module):
    """out = shared_experts(x) + Σ_k gate_k · expert_k(x), experts chosen per token by `gate`."""

    def __init__(self, args: HybridLMArgs):
        super().__init__()
        self.top_k, self.n_experts = args.n_experts_per_tok, args.n_routed_experts
        self.n_group, self.topk_group = args.n_group, args.topk_group
        self.norm_topk_prob, self.scaling = args.norm_topk_prob, args.routed_scaling_factor
        self.aux_loss_coeff = args.moe_aux_loss_coeff
        routed_dim = args.moe_latent_size or args.dim
        self.gate = Router(args.dim, args.n_routed_experts)
        self.experts = RoutedExperts(args.n_routed_experts, routed_dim, args.moe_intermediate_size,
                                     args.moe_backend)
        self.shared_experts = (MLP(args.dim, args.moe_shared_expert_intermediate_size)
                               if args.moe_shared_expert_intermediate_size else None)
        self.fc1_latent_proj = self.fc2_latent_proj = None
        if args.moe_latent_size:
            self.fc1_latent_proj = nn.Linear(args.dim, args.moe_latent_size, bias=False)
            self.fc2_latent_proj = nn.Linear(args.moe_latent_size, args.dim, bias=False)
        self.sequence_counts = SequenceCounts()
        self.register_buffer("aux_loss_scale", torch.zeros(()), persistent=False)
        """coeff / the step's global loss-token count (`set_aux_loss_scale`)."""

    def init_buffer(self, name: str, t: Tensor) -> None:
        t.zero_()

    def forward(self, x_BSD: Tensor) -> Tensor:
        b, s, d = x_BSD.shape
        x_TD = x_BSD.reshape(b * s, d)
        logits_TE = self.gate(x_TD)
        scores_TE, experts_TK, gates_TK = route(
            logits_TE, self.gate.e_score_correction_bias, top_k=self.top_k, n_group=self.n_group,
            topk_group=self.topk_group, norm_topk_prob=self.norm_topk_prob, scaling=self.scaling)
        flat_R = experts_TK.flatten()
        counts_E = torch.zeros(self.n_experts, dtype=torch.int64, device=x_TD.device).scatter_add_(
            0, flat_R, torch.ones_like(flat_R))
        if torch.is_grad_enabled():
            with torch.no_grad():
                self.gate.tokens_per_expert.add_(counts_E.float())
        # Rows grouped by expert (a stable sort keeps token order inside each expert), and back
        # by gathering each (token, choice)'s row: gathers, which a compiled block fuses into
        # the gate-weighted sum below.
        order_R = flat_R.argsort(stable=True)
        position_R = torch.empty_like(order_R).scatter_(
            0, order_R, torch.arange(order_R.numel(), device=order_R.device))
        routed_TI = self.fc1_latent_proj(x_TD) if self.fc1_latent_proj is not None else x_TD
        y_RI = self.experts(routed_TI[order_R // self.top_k], counts_E)
        y_TKI = y_RI[position_R].view(b * s, self.top_k, -1)
        # Gate-weighted sum in fp32, like the reference's fp32 gates times expert outputs.
        routed_out_TI = (y_TKI.float() * gates_TK.unsqueeze(-1)).sum(dim=1).to(x_TD.dtype)
        if self.fc2_latent_proj is not None:
            routed_out_TI = self.fc2_latent_proj(routed_out_TI)
        out_BSD = routed_out_TI.view(b, s, d)
        if self.shared_experts is not None:
            out_BSD = out_BSD + self.shared_experts(x_BSD)
        if self.aux_loss_coeff > 0 and torch.is_grad_enabled():
            aux_sum = self._sequence_aux_sum(scores_TE, flat_R, b)
            out_BSD = AuxLossGradient.apply(out_BSD, aux_sum, self.aux_loss_scale)
        return out_BSD

    def _sequence_aux_sum(self, scores_TE: Tensor, flat_R: Tensor, b: int) -> Tensor:
        """Σ over this rank's tokens t of Σ_i p_ti f_bi: the sequence-level balance loss (per
        sequence b: Σ_i P_bi f_bi, P the mean normalised score, f = E / (K S) × tokens of b on
        expert i), summed over sequences weighted by their length S, so it divides by the global
        token count like the language loss. f counts whole sequences (`sequence_counts`)."""
        e, k = self.n_experts, self.top_k
        seq_R = torch.arange(b, device=flat_R.device).repeat_interleave(flat_R.numel() // b)
        counts_BE = torch.zeros(b, e, device=flat_R.device).index_put_(
            (seq_R, flat_R), torch.ones_like(flat_R, dtype=torch.float32), accumulate=True)
        counts_BE = self.sequence_counts(counts_BE)
        seq_len_B1 = counts_BE.sum(-1, keepdim=True) / k
        f_BE = counts_BE * e / (k * seq_len_B1)
        p_TE = scores_TE / scores_TE.sum(-1, keepdim=True)
        return (p_TE.view(b, -1, e) * f_BE.unsqueeze(1)).sum()

    @staticmethod
    def forward_flops_per_token(args: HybridLMArgs) -> int:
        """Active matmul FLOPs per token: the router, the k chosen experts, the shared expert
        and the latent projections (experts a token does not visit cost it nothing)."""
        routed_dim = args.moe_latent_size or args.dim
        flops = 2 * args.dim * args.n_routed_experts
        flops += args.n_experts_per_tok * RoutedExperts.forward_flops_per_row(routed_dim, args.moe_intermediate_size)
        if args.moe_shared_expert_intermediate_size:
            flops += MLP.forward_flops_per_token(args.dim, args.moe_shared_expert_intermediate_size)
        if args.moe_latent_size:
            flops += 2 * 2 * args.dim * args.moe_latent_size
        return flops


def moe_layers(model: nn.Module) -> dict[int, MoE]:
    """Global layer index -> MoE module, for the MoE blocks `model` (a stage) holds."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, MoE):
            out[int(name.split(".")[1])] = module
    return out


@torch.no_grad()
def set_aux_loss_scale(moes: Iterable[MoE], scale: float) -> None:
    """Once per step, before its forwards: the auxiliary loss's gradient is coeff × `scale`
    (1 / the step's global loss-token count, the language loss's normalisation)."""
    for moe in moes:
        moe.aux_loss_scale.fill_(moe.aux_loss_coeff * scale)


@torch.no_grad()
def update_correction_bias(moe: MoE, global_counts_E: Tensor, rate: float) -> None:
    """The reference's load balancing: bias += rate · sign(mean load − load), from the counts of
    the whole global batch; then the layer's local counts start again from zero."""
    mean = global_counts_E.mean()
    moe.gate.e_score_correction_bias.add_(rate * torch.sign(mean - global_counts_E))
    moe.gate.tokens_per_expert.zero_()
