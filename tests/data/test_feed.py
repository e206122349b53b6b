"""titan_mimo/data/feed.py: what each rank loads, from its topology alone (no process group)."""

from __future__ import annotations

from titan_mimo.config_loader import config_from_dict
from titan_mimo.data.feed import data_roles, is_loss_rank
from titan_mimo.topology import Topology, resolve_placements

VISION = {"model": "vit/debug", "feeds": "language", "placeholder_id": 1}
LANGUAGE = {"model": "hybrid_lm/debug"}


def _cfg(vision: dict, language: dict, **sections):
    return config_from_dict({"modules": {"vision": {**VISION, **vision}, "language": {**LANGUAGE, **language}},
                             **sections})


def _topology(cfg, world: int, rank: int) -> Topology:
    placements = resolve_placements(cfg, world, {})
    return Topology(rank=rank, world_size=world, colocated=cfg.parallelism.colocated or world == 1,
                    placements=placements, meshes={}, expert_meshes={}, language="language",
                    n_microbatches=1)


def test_roles_of_a_pipelined_non_colocated_layout():
    # vision ranks 0-1 (dp 2) | language ranks 2-9 as (pp 2, dp_shard 2, tp 2)
    cfg = _cfg({"ranks": 2}, {"ranks": 8, "pp": 2, "tp": 2}, training={"global_batch_size": 8, "micro_batch_size": 1})
    roles = {rank: data_roles(cfg, _topology(cfg, 10, rank)) for rank in range(10)}
    assert roles[1].images == {"vision": (2, 1)} and roles[1].text is None
    # First and last stages load text of their dp slots; no stage loads images.
    assert [roles[r].text for r in range(2, 10)] == [(2, 0), (2, 0), (2, 1), (2, 1)] * 2
    assert all(roles[r].images == {} and not roles[r].text_with_images for r in range(2, 10))
    # The loss is counted once per language replica: tp 0 of the last stage.
    assert [r for r in range(10) if is_loss_rank(_topology(cfg, 10, r), "language")] == [6, 8]


def test_roles_of_a_middle_stage_and_of_colocated_ranks():
    cfg = _cfg({"ranks": 1}, {"ranks": 3, "pp": 3}, training={"global_batch_size": 3, "micro_batch_size": 1})
    middle = data_roles(cfg, _topology(cfg, 4, 2))
    assert middle.text is None and middle.images == {}  # hidden states come from the neighbours
    cfg = _cfg({}, {}, parallelism={"colocated": True}, data={"balance_patches": False})
    roles = data_roles(cfg, _topology(cfg, 2, 1))
    assert (roles.text, roles.text_with_images, roles.images, roles.colocated_encoders) == (
        (2, 1), True, {}, ("vision",))
