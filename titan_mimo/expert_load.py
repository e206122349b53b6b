"""The language model's MoE load balancing across the world, once per step: the auxiliary
loss's scale before the forwards, the expert counts of the whole global batch after the
backwards, the correction-bias update after the optimizer step, and the load metrics.

Each MoE router counts the tokens its experts received on this rank (its own data-parallel
slots, sequence part, micro-batches). The sum over every rank that holds the layer is the
global batch's count, in any layout; a world all-reduce of an [MoE layers, experts] tensor
(each rank fills the rows of the layers it holds, zeros elsewhere; every rank calls it, encoder
ranks included, since it is a world collective) gives every rank that sum, so each updates its
layers' biases exactly as the single-process run does. The counts stay on the device: the
update is queued with the optimizer steps and the metrics are read with the step's results.
"""

from __future__ import annotations

import torch
from torch import nn

from titan_mimo.distributed import world_sum_
from titan_mimo.models.language.moe import moe_layers, set_aux_loss_scale, update_correction_bias


class ExpertLoad:
    """What one rank does for MoE load balancing; inert (no collective) for a model without MoE
    blocks, on every rank alike, since every rank knows the language model's args."""

    def __init__(self, layer_pattern: str, n_experts: int, parts: list[nn.Module], bias_rate: float,
                 frozen: bool, device: torch.device):
        self.layers = [i for i, kind in enumerate(layer_pattern) if kind == "E"]
        """Global indices of the model's MoE layers: the rows of the counts."""
        self.n_experts, self.bias_rate, self.device = n_experts, bias_rate, device
        self.frozen = frozen
        """A frozen language model changes nothing, its correction biases included."""
        self.mine = {idx: moe for part in parts for idx, moe in moe_layers(part).items()}

    @property
    def active(self) -> bool:
        return bool(self.layers)

    def begin_step(self, global_loss_tokens: float) -> None:
        """Before the step's forwards: the auxiliary loss divides by the step's global loss-token
        count, like the language loss."""
        set_aux_loss_scale(self.mine.values(), 1.0 / global_loss_tokens)

    def reduce(self) -> torch.Tensor | None:
        """After the step's backwards, on every rank: the global [MoE layers, experts] counts
        (float32), summed on the device, not read back. None without MoE blocks."""
        if not self.active:
            return None
        counts = torch.zeros(len(self.layers), self.n_experts, device=self.device)
        for row, idx in enumerate(self.layers):
            if idx in self.mine:
                counts[row] = self.mine[idx].gate.tokens_per_expert
        return world_sum_(counts)

    def update_biases(self, global_counts: torch.Tensor | None, apply: bool = True) -> None:
        """After the optimizer step: move this rank's layers' correction biases (unless `apply`
        is False: a skipped step); their local counts start again from zero."""
        if global_counts is None:
            return
        rate = self.bias_rate if apply and not self.frozen else 0.0
        for row, idx in enumerate(self.layers):
            if idx in self.mine:
                update_correction_bias(self.mine[idx], global_counts[row], rate)

    def metrics(self, global_counts: list[list[float]]) -> dict[str, float]:
        """Per MoE layer, max / mean tokens per expert over the global batch (1.0 = balanced;
        dropless routing drops none, so there is no dropped share to report), and the worst."""
        out = {}
        for idx, counts in zip(self.layers, global_counts):
            mean = sum(counts) / len(counts)
            out[f"moe/load_max_over_mean/layer{idx}"] = max(counts) / mean if mean > 0 else 0.0
        if out:
            out["moe/load_max_over_mean"] = max(out.values())
        return out
