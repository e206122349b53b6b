"""torchtitan's warmup + decay LR schedule (`components.lr_scheduler`), built from our config's
fields. Checked on torchtitan 0.2.2 (`TORCHTITAN_CHECKED`): `build_lr_schedulers(optimizers,
LRScheduler config, training_steps)` returns a container of one LambdaLR per optimizer; it only
iterates the optimizers, so a plain list of them stands in for its OptimizersContainer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchtitan.components.lr_scheduler import LRSchedulersContainer, build_lr_schedulers
from torchtitan.config.job_config import LRScheduler

__all__ = ["LRSchedulersContainer", "warmup_decay_factor", "warmup_decay_schedulers"]


def warmup_decay_schedulers(optimizers: list[torch.optim.Optimizer], *, warmup_steps: int, decay_type: str,
                            min_lr_factor: float, training_steps: int) -> LRSchedulersContainer:
    """One LambdaLR per optimizer, all with the same factor of the step (linear warmup over
    `warmup_steps`, then `decay_type` decay to `min_lr_factor` at `training_steps`);
    `.step()` steps them all, `.state_dict()` is what checkpoints store."""
    config = LRScheduler(warmup_steps=warmup_steps, decay_type=decay_type, min_lr_factor=min_lr_factor)
    return build_lr_schedulers(optimizers, config, training_steps)


def warmup_decay_factor(*, warmup_steps: int, decay_type: str, min_lr_factor: float,
                        training_steps: int) -> Callable[[int], float]:
    """step (0-based) -> the schedule's LR factor, without an optimizer of one's own: the
    lambda of the container's LambdaLR (`schedulers[0].lr_lambdas[0]` in 0.2.2)."""
    dummy = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    container = warmup_decay_schedulers([dummy], warmup_steps=warmup_steps, decay_type=decay_type,
                                        min_lr_factor=min_lr_factor, training_steps=training_steps)
    return container.schedulers[0].lr_lambdas[0]
