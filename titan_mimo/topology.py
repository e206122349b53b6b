"""Topology: which ranks each module occupies, its DeviceMesh, and this rank's role.

Placement is resolved and validated from the config alone (world size and model shapes, no
communication), so a bad layout fails before any process group work. `build_topology` then
creates every module's mesh on *every* rank, in config order: `DeviceMesh` creates its groups
with `new_group`, whose names come from a per-process counter, so a mesh built only by its
member ranks silently cross-wires groups on gloo (research note, cpu-feasibility §1).

Mesh axes of a module, outermost first: ("pp", "dp_replicate", "dp_shard", "tp"). A language
module with `ep > 1` or `tp > 1` also gets an expert mesh over the same ranks, ("pp",
"expert_dp", "ep"): each pipeline stage's ranks in (dp_replicate, dp_shard, tp) order, the last
`ep` of them (tp first, then dp_shard) an expert-parallel group. Routed experts are split over
"ep" and FSDP-sharded over "expert_dp" (every other rank of the stage: each holds other tokens,
so their expert gradients add up), as torchtitan borrows EP ranks from dp_shard x tp.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from titan_mimo.config import JobConfig

MESH_AXES = ("pp", "dp_replicate", "dp_shard", "tp")
EXPERT_MESH_AXES = ("pp", "expert_dp", "ep")


@dataclass(frozen=True, kw_only=True)
class Placement:
    """One module's resolved layout over the global ranks [start, start + size)."""

    name: str
    start: int
    size: int
    pp: int
    dp_replicate: int
    dp_shard: int
    tp: int
    feeds: str
    ep: int = 1

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def ranks(self) -> range:
        return range(self.start, self.start + self.size)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.pp, self.dp_replicate, self.dp_shard, self.tp)

    @property
    def has_expert_mesh(self) -> bool:
        """Routed experts need their own mesh wherever a stage's ranks hold different tokens
        other than by data parallelism: expert parallelism, or sequence-parallel TP."""
        return not self.is_encoder and (self.ep > 1 or self.tp > 1)

    @property
    def expert_shape(self) -> tuple[int, int, int]:
        return (self.pp, self.size // (self.pp * self.ep), self.ep)

    @property
    def is_encoder(self) -> bool:
        return bool(self.feeds)

    def coords_of(self, rank: int) -> dict[str, int]:
        """Mesh coordinates of a global rank of this module."""
        if rank not in self.ranks:
            raise ValueError(f"rank {rank} is not in module {self.name!r} (ranks {self.ranks})")
        idx = torch.arange(self.size).reshape(self.shape)
        pos = (idx == rank - self.start).nonzero()[0].tolist()
        return dict(zip(MESH_AXES, pos))

    def rank_at(self, **coords: int) -> int:
        """Global rank at the given mesh coordinates."""
        idx = torch.arange(self.size).reshape(self.shape)
        return self.start + int(idx[tuple(coords[a] for a in MESH_AXES)])


def resolve_placements(cfg: JobConfig, world_size: int, tp_divisors: dict[str, dict[str, int]]
                       ) -> dict[str, Placement]:
    """Resolve `dp_shard = -1`, assign consecutive rank ranges, and validate the layout.

    `tp_divisors[name]` holds the model counts (heads, groups, vocab) its TP degree must divide.
    """
    colocated = cfg.parallelism.colocated or world_size == 1
    placements: dict[str, Placement] = {}
    start = 0
    for name, m in cfg.modules.items():
        size = world_size if colocated else m.ranks
        where = f"modules.{name}"
        fixed = m.dp_replicate * m.tp * m.pp
        if m.dp_shard == -1:
            if size % fixed:
                raise ValueError(
                    f"{where}: dp_replicate*tp*pp = {fixed} does not divide its {size} ranks, "
                    "so dp_shard = -1 cannot fill them; change the degrees or ranks"
                )
            dp_shard = size // fixed
        else:
            dp_shard = m.dp_shard
        if fixed * dp_shard != size:
            raise ValueError(
                f"{where}: pp*dp_replicate*dp_shard*tp = {m.pp}*{m.dp_replicate}*{dp_shard}*{m.tp} "
                f"= {fixed * dp_shard} but the module has {size} ranks; make them multiply out "
                "(dp_shard = -1 takes the remaining ranks)"
            )
        if m.ep > 1 and (dp_shard * m.tp) % m.ep:
            raise ValueError(
                f"{where}: ep = {m.ep} must divide dp_shard*tp = {dp_shard}*{m.tp} = {dp_shard * m.tp} "
                "(expert parallelism borrows its ranks from them); pick an ep that divides it"
            )
        for what, count in tp_divisors.get(name, {}).items():
            if count % m.tp:
                raise ValueError(
                    f"{where}: tp = {m.tp} does not divide the model's {what} = {count}; "
                    "pick a tp that divides it"
                )
        placements[name] = Placement(name=name, start=0 if colocated else start, size=size,
                                     pp=m.pp, dp_replicate=m.dp_replicate, dp_shard=dp_shard,
                                     tp=m.tp, feeds=m.feeds, ep=m.ep)
        start += 0 if colocated else size
    if colocated:
        lm = placements[cfg.language_name]
        for name, p in placements.items():
            if (p.dp_replicate, p.dp_shard, p.tp, p.pp) != (lm.dp_replicate, lm.dp_shard, lm.tp, 1):
                raise ValueError(
                    f"modules.{name}: colocated mode needs every module laid out like the language "
                    f"module without pipelining (dp_replicate={lm.dp_replicate}, dp_shard={lm.dp_shard}, "
                    f"tp={lm.tp}, pp=1), got dp_replicate={p.dp_replicate}, dp_shard={p.dp_shard}, "
                    f"tp={p.tp}, pp={p.pp}"
                )
    if not colocated and start != world_size:
        sizes = " + ".join(f"{n}:{m.ranks}" for n, m in cfg.modules.items())
        raise ValueError(
            f"modules: ranks {sizes} = {start} but the world has {world_size} processes; "
            f"the modules' ranks must cover the world exactly (or set parallelism.colocated = true)"
        )
    _check_batch(cfg, placements)
    lm = placements[cfg.language_name]
    if cfg.training.loss == "fused" and lm.tp > 1:
        raise ValueError(f"training.loss = \"fused\" needs the language module at tp = 1 (it has "
                         f"tp = {lm.tp}: a vocabulary-parallel head); use \"auto\" or \"logits\"")
    return placements


def uses_fused_loss(cfg: JobConfig, language: Placement) -> bool:
    """Whether the language model computes its loss with the fused head + cross-entropy."""
    return cfg.training.loss == "fused" or (cfg.training.loss == "auto" and language.tp == 1)


def _check_batch(cfg: JobConfig, placements: dict[str, Placement]) -> None:
    t = cfg.training
    lm = placements[cfg.language_name]
    per_mb = t.micro_batch_size * lm.dp
    if t.global_batch_size % per_mb:
        raise ValueError(
            f"training.global_batch_size = {t.global_batch_size} is not a multiple of "
            f"micro_batch_size * language dp = {t.micro_batch_size} * {lm.dp} = {per_mb}"
        )
    for name, p in placements.items():
        if p.is_encoder and per_mb % p.dp:
            raise ValueError(
                f"modules.{name}: a micro-batch holds micro_batch_size * language dp = {per_mb} "
                f"samples, which its dp = {p.dp} ranks cannot split evenly; "
                f"make {per_mb} a multiple of {p.dp}"
            )
    n_mb = t.global_batch_size // per_mb
    n_stages = lm.pp * cfg.parallelism.stages_per_rank
    if lm.pp > 1 and n_mb < n_stages:
        raise ValueError(
            f"training: {n_mb} micro-batches per step (global_batch_size / (micro_batch_size * "
            f"language dp)) is fewer than the {n_stages} pipeline stages; raise global_batch_size "
            "or lower micro_batch_size"
        )
    if cfg.parallelism.pipeline_schedule == "Interleaved1F1B" and lm.pp > 1 and n_mb % lm.pp:
        raise ValueError(
            f"training: Interleaved1F1B needs the {n_mb} micro-batches per step to be a multiple "
            f"of pp = {lm.pp}"
        )


@dataclass(kw_only=True)
class Topology:
    """Meshes of all modules (built on every rank) and this rank's place among them."""

    rank: int
    world_size: int
    colocated: bool
    placements: dict[str, Placement]
    meshes: dict[str, DeviceMesh]
    expert_meshes: dict[str, DeviceMesh] = field(default_factory=dict)
    """Per module with `has_expert_mesh`: its ("pp", "expert_dp", "ep") mesh."""
    language: str
    n_microbatches: int

    @property
    def my_modules(self) -> list[str]:
        """Modules this rank computes: one in non-colocated mode, all when colocated."""
        return [n for n, p in self.placements.items() if self.rank in p.ranks]

    def coords(self, module: str) -> dict[str, int]:
        return self.placements[module].coords_of(self.rank)

    def is_first_stage(self, module: str) -> bool:
        return self.coords(module)["pp"] == 0

    def is_last_stage(self, module: str) -> bool:
        return self.coords(module)["pp"] == self.placements[module].pp - 1

    def dp_rank(self, module: str) -> int:
        c = self.coords(module)
        return c["dp_replicate"] * self.placements[module].dp_shard + c["dp_shard"]

    def describe(self) -> str:
        parts = []
        for name, p in self.placements.items():
            degrees = " ".join(f"{a}={getattr(p, a)}" for a in MESH_AXES + ("ep",) if getattr(p, a) > 1)
            parts.append(f"{name}[{p.start}..{p.start + p.size - 1}]{' ' + degrees if degrees else ''}")
        return ("colocated: " if self.colocated else "") + " | ".join(parts)


def build_topology(cfg: JobConfig, placements: dict[str, Placement], device_type: str) -> Topology:
    """Create every module's DeviceMesh on every rank (a world collective), in config order."""
    rank, world = dist.get_rank(), dist.get_world_size()
    meshes, expert_meshes = {}, {}
    for name, p in placements.items():
        mesh = torch.arange(p.start, p.start + p.size).reshape(p.shape)
        meshes[name] = DeviceMesh(device_type, mesh, mesh_dim_names=MESH_AXES)
        if p.has_expert_mesh:
            expert_meshes[name] = DeviceMesh(device_type, mesh.reshape(p.expert_shape),
                                             mesh_dim_names=EXPERT_MESH_AXES)
    lm = placements[cfg.language_name]
    return Topology(
        rank=rank, world_size=world,
        colocated=cfg.parallelism.colocated or world == 1,
        placements=placements, meshes=meshes, expert_meshes=expert_meshes, language=cfg.language_name,
        n_microbatches=cfg.training.global_batch_size // (cfg.training.micro_batch_size * lm.dp),
    )
