"""Per-role loading of one step, and the resumable loader that prefetches steps in worker
processes.

`Roles` says what this rank loads (from its topology, as plain data a worker can hold):
language first/last stage -> tokens and labels of its language dp slots; encoder rank -> its
encoder dp slots, with images. `load_roles` reads exactly that for one step from any dataset
with `batch(indices, split, with_images)` (mock or real), in slot order from `slot_indices`.

`StepLoader` wraps a torchdata `StatefulDataLoader` whose items are whole steps: worker
processes build step k+1.. while step k trains. Its state (what a checkpoint stores) is the next
step and the loader's own state dict; samples are a pure function of (seed, index), so
restoring it continues the exact stream.

Balance (`data.balance_patches`): inside each micro-batch, samples are reordered so that every
encoder dp rank's contiguous slot range holds a similar number of image tokens (greedy
longest-first into equal-count bins). The order depends only on the config and the data, so
encoder and language ranks still agree on every slot; each rank resolves the whole micro-batch's
layouts (text + image headers) to compute it. Micro-batches keep the same samples, so losses
match the unbalanced run to round-off, and layouts with different encoder dp agree to round-off
rather than bitwise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torchdata.stateful_dataloader import StatefulDataLoader

from titan_mimo.data.batch import Batch
from titan_mimo.data.plan import SamplePlan, owned_slots

# torchdata 0.11 calls a deprecated torch API each time an iterator starts; nothing to act on.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


@dataclass(frozen=True, kw_only=True)
class Roles:
    text: tuple[int, int] | None = None
    """(language dp, dp rank) when this rank is a first or last language stage."""
    text_with_images: bool = False
    """Colocated: the language rank also encodes, so its text batches carry the images."""
    images: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Encoder name -> (dp, dp rank) for each encoder this rank runs across a bridge."""
    colocated_encoders: tuple[str, ...] = ()
    """Encoders that read their images from the text batches (colocated)."""
    balance_dp: int = 0
    """> 0: reorder each micro-batch's samples to balance image tokens over this many encoder dp
    ranks (data.balance_patches); 0: plan order."""

    @property
    def key(self) -> str:
        """What this rank loads, for checking a loader state belongs to the same role."""
        return repr((self.text, self.text_with_images, sorted(self.images.items()), self.colocated_encoders))


def balanced_order(indices: list[int], weights: list[int], dp: int) -> list[int]:
    """`indices` regrouped into dp equal-count contiguous groups with similar weight sums:
    heaviest first into the lightest group that has room (ties: lowest group, then index order).
    Each group keeps its samples in index order."""
    per = len(indices) // dp
    groups: list[list[int]] = [[] for _ in range(dp)]
    sums = [0] * dp
    for k in sorted(range(len(indices)), key=lambda k: (-weights[k], k)):
        g = min((g for g in range(dp) if len(groups[g]) < per), key=lambda g: (sums[g], g))
        groups[g].append(k)
        sums[g] += weights[k]
    return [indices[k] for g in groups for k in sorted(g)]


def slot_indices(dataset, plan: SamplePlan, step: int, mb: int, split: str, balance_dp: int) -> list[int]:
    """Global sample index of every slot of one micro-batch."""
    indices = list(plan.microbatch_indices(step, mb))
    if balance_dp <= 1:
        return indices
    return balanced_order(indices, [dataset.image_tokens(i, split) for i in indices], balance_dp)


def owned_indices(order: list[int], dp: int, dp_rank: int) -> list[int]:
    lo, hi = owned_slots(len(order), dp, dp_rank)
    return order[lo:hi]


def load_roles(dataset, plan: SamplePlan, roles: Roles, step: int, split: str
               ) -> tuple[list[Batch], dict[str, list[Batch]]]:
    """(text batches per micro-batch, {encoder: image batches per micro-batch}) of one step."""
    text: list[Batch] = []
    images: dict[str, list[Batch]] = {name: [] for name in roles.images}
    for mb in range(plan.n_microbatches):
        order = slot_indices(dataset, plan, step, mb, split, roles.balance_dp)
        if roles.text is not None:
            text.append(dataset.batch(owned_indices(order, *roles.text), split,
                                      with_images=roles.text_with_images))
        for name, (dp, dp_rank) in roles.images.items():
            images[name].append(dataset.batch(owned_indices(order, dp, dp_rank), split))
    for name in roles.colocated_encoders:
        images[name] = text
    return text, images


class _Steps:
    """Map-style view for the DataLoader: item k = this rank's data of step k."""

    def __init__(self, dataset, plan: SamplePlan, roles: Roles, steps: int) -> None:
        self.dataset, self.plan, self.roles, self.steps = dataset, plan, roles, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int):
        return step, load_roles(self.dataset, self.plan, self.roles, step, "train")


def _identity(x):
    return x


class StepLoader:
    """Training steps in order from worker processes; `get(step)` returns step `step`'s data."""

    def __init__(self, dataset, plan: SamplePlan, roles: Roles, steps: int, num_workers: int,
                 prefetch_factor: int = 2) -> None:
        self.items = _Steps(dataset, plan, roles, steps)
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.roles_key = roles.key
        self._start(0)

    def _start(self, first: int, loader_state: dict | None = None, next_step: int | None = None) -> None:
        self.first = first
        self.loader = StatefulDataLoader(
            self.items, batch_size=None, sampler=range(first, len(self.items)), collate_fn=_identity,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
        )
        if loader_state is not None:
            self.loader.load_state_dict(loader_state)
        self.next_step, self._it = first if next_step is None else next_step, None

    def get(self, step: int):
        if step != self.next_step:  # a jump (e.g. a resume without loader state): restart there
            self._start(step)
        if self._it is None:
            self._it = iter(self.loader)
        got, data = next(self._it)
        assert got == step, f"data loader returned step {got} for step {step}"
        self.next_step = step + 1
        return data

    def state_dict(self) -> dict:
        return {"next_step": self.next_step, "first": self.first, "roles": self.roles_key,
                "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if state.get("roles") == self.roles_key:
            self._start(state["first"], state["loader"], state["next_step"])
        else:  # another placement saved it: the stream depends only on the step
            self._start(state["next_step"])

    def close(self) -> None:
        self._it = None
