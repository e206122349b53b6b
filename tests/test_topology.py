"""titan_mimo/topology.py: placement resolution and its errors (pure Python), and one 6-process
gloo run that builds every module's mesh and reduces over it."""

import json
import textwrap

import pytest
from launcher import torchrun

from titan_mimo.config_loader import config_from_dict
from titan_mimo.topology import MESH_AXES, Placement, Topology, resolve_placements

def make_cfg(modules: dict, **sections):
    """A JobConfig from module tables (in rank order) and optional sections."""
    return config_from_dict({"modules": modules, **sections})


def vision(**kw):
    return {"model": "vit/debug", "feeds": "language", "placeholder_id": 1, **kw}


def language(**kw):
    return {"model": "hybrid_lm/debug", **kw}


def layout(p: Placement) -> tuple:
    return (p.start, p.size, p.pp, p.dp_replicate, p.dp_shard, p.tp)


# --------------------------------------------------------------------------------------------
# resolve_placements


def test_consecutive_rank_ranges_in_config_order():
    cfg = make_cfg({
        "vision": vision(ranks=2),
        "audio": {"model": "vit/debug", "feeds": "language", "placeholder_id": 2, "ranks": 1},
        "language": language(ranks=4, tp=2),
    })
    placements = resolve_placements(cfg, 7, {"language": {"n_heads": 4}})
    assert list(placements) == ["vision", "audio", "language"]
    # (start, size, pp, dp_replicate, dp_shard, tp)
    assert layout(placements["vision"]) == (0, 2, 1, 1, 2, 1)
    assert layout(placements["audio"]) == (2, 1, 1, 1, 1, 1)
    assert layout(placements["language"]) == (3, 4, 1, 1, 2, 2)
    assert list(placements["language"].ranks) == [3, 4, 5, 6]
    assert placements["vision"].is_encoder and not placements["language"].is_encoder
    assert placements["language"].dp == 2


@pytest.mark.parametrize("degrees, expected_dp_shard", [
    ({}, 8),
    ({"tp": 2}, 4),
    ({"dp_replicate": 2, "tp": 2}, 2),
    ({"pp": 2, "tp": 2}, 2),
    ({"pp": 2, "dp_replicate": 2, "tp": 2}, 1),
])
def test_dp_shard_minus_one_takes_the_rest(degrees, expected_dp_shard):
    cfg = make_cfg({"vision": vision(ranks=1), "language": language(ranks=8, **degrees)},
                   training={"global_batch_size": 16, "micro_batch_size": 1})
    lm = resolve_placements(cfg, 9, {})["language"]
    assert lm.dp_shard == expected_dp_shard
    assert lm.pp * lm.dp_replicate * lm.dp_shard * lm.tp == 8


def test_explicit_dp_shard_kept():
    cfg = make_cfg({"vision": vision(ranks=2, dp_shard=2),
                    "language": language(ranks=4, dp_shard=4)})
    placements = resolve_placements(cfg, 6, {})
    assert placements["vision"].dp_shard == 2 and placements["language"].dp_shard == 4


def test_world_of_one_is_colocated():
    # The debug layout's ranks (2 + 2) are ignored: with one process everything is colocated.
    cfg = make_cfg({"vision": vision(ranks=2), "language": language(ranks=2)})
    placements = resolve_placements(cfg, 1, {})
    assert layout(placements["vision"]) == (0, 1, 1, 1, 1, 1)
    assert layout(placements["language"]) == (0, 1, 1, 1, 1, 1)


def test_colocated_world_of_four():
    cfg = make_cfg({"vision": vision(ranks=2), "language": language(ranks=2)},
                   parallelism={"colocated": True})
    placements = resolve_placements(cfg, 4, {})
    assert layout(placements["vision"]) == (0, 4, 1, 1, 4, 1)
    assert layout(placements["language"]) == (0, 4, 1, 1, 4, 1)
    cfg = make_cfg({"vision": vision(tp=2), "language": language(tp=2)},
                   parallelism={"colocated": True})
    placements = resolve_placements(cfg, 4, {"vision": {"n_heads": 2}, "language": {"n_heads": 4}})
    assert layout(placements["vision"]) == layout(placements["language"]) == (0, 4, 1, 1, 2, 2)


BAD_LAYOUTS = [
    ("ranks_do_not_cover_world",
     dict(modules={"vision": vision(ranks=2), "language": language(ranks=2)}), 6, {},
     r"modules: ranks vision:2 \+ language:2 = 4 but the world has 6 processes; "
     r"the modules' ranks must cover the world exactly"),
    ("ranks_exceed_world",
     dict(modules={"vision": vision(ranks=2), "language": language(ranks=4)}), 4, {},
     r"ranks vision:2 \+ language:4 = 6 but the world has 4 processes"),
    ("degrees_do_not_multiply_out",
     dict(modules={"vision": vision(ranks=2), "language": language(ranks=4, dp_shard=3)}), 6, {},
     r"modules.language: pp\*dp_replicate\*dp_shard\*tp = 1\*1\*3\*1 = 3 but the module has "
     r"4 ranks; make them multiply out"),
    ("dp_shard_rest_cannot_fill",
     dict(modules={"vision": vision(ranks=2), "language": language(ranks=3, tp=2)}), 5, {},
     r"modules.language: dp_replicate\*tp\*pp = 2 does not divide its 3 ranks, "
     r"so dp_shard = -1 cannot fill them"),
    ("tp_does_not_divide_heads",
     dict(modules={"vision": vision(ranks=2), "language": language(ranks=4, tp=2)}), 6,
     {"language": {"n_heads": 4, "n_kv_heads": 3}},
     r"modules.language: tp = 2 does not divide the model's n_kv_heads = 3; "
     r"pick a tp that divides it"),
    ("encoder_tp_does_not_divide",
     dict(modules={"vision": vision(ranks=4, tp=4), "language": language(ranks=2)}), 6,
     {"vision": {"n_heads": 6}},
     r"modules.vision: tp = 4 does not divide the model's n_heads = 6"),
    ("global_batch_not_divisible_by_mbs_times_lm_dp",
     dict(modules={"vision": vision(ranks=2), "language": language(ranks=2)},
          training={"global_batch_size": 6, "micro_batch_size": 2}), 4, {},
     r"training.global_batch_size = 6 is not a multiple of micro_batch_size \* language dp = "
     r"2 \* 2 = 4"),
    ("microbatch_not_divisible_by_encoder_dp",
     dict(modules={"vision": vision(ranks=3), "language": language(ranks=2)}), 5, {},
     r"modules.vision: a micro-batch holds micro_batch_size \* language dp = 4 samples, which its "
     r"dp = 3 ranks cannot split evenly; make 4 a multiple of 3"),
    ("fewer_microbatches_than_stages",
     dict(modules={"vision": vision(ranks=1), "language": language(ranks=4, pp=4)},
          training={"global_batch_size": 4, "micro_batch_size": 2}), 5, {},
     r"training: 2 micro-batches per step .* is fewer than the 4 pipeline stages"),
    ("fewer_microbatches_than_virtual_stages",
     dict(modules={"vision": vision(ranks=1), "language": language(ranks=2, pp=2)},
          training={"global_batch_size": 6, "micro_batch_size": 2},
          parallelism={"pipeline_schedule": "Interleaved1F1B", "stages_per_rank": 2}), 3, {},
     r"training: 3 micro-batches per step .* is fewer than the 4 pipeline stages"),
    ("interleaved_needs_multiple_of_pp",
     dict(modules={"vision": vision(ranks=1), "language": language(ranks=2, pp=2)},
          training={"global_batch_size": 6, "micro_batch_size": 2},
          parallelism={"pipeline_schedule": "Interleaved1F1B"}), 3, {},
     r"training: Interleaved1F1B needs the 3 micro-batches per step to be a multiple of pp = 2"),
    ("colocated_encoder_differs",
     dict(modules={"vision": vision(tp=2), "language": language()},
          parallelism={"colocated": True}), 4, {},
     r"modules.vision: colocated mode needs every module laid out like the language module "
     r"without pipelining \(dp_replicate=1, dp_shard=4, tp=1, pp=1\), got dp_replicate=1, "
     r"dp_shard=2, tp=2, pp=1"),
    ("colocated_language_pipelined",
     dict(modules={"vision": vision(), "language": language(pp=2)},
          parallelism={"colocated": True}), 4, {},
     r"modules.vision: colocated mode needs .*\(dp_replicate=1, dp_shard=2, tp=1, pp=1\), "
     r"got dp_replicate=1, dp_shard=4, tp=1, pp=1"),
    ("fused_loss_with_tp",
     dict(modules={"vision": vision(ranks=2), "language": language(ranks=2, tp=2)},
          training={"loss": "fused"}), 4, {},
     r'training.loss = "fused" needs the language module at tp = 1 \(it has tp = 2: a vocabulary-parallel '
     r'head\); use "auto" or "logits"'),
]


@pytest.mark.parametrize("sections, world_size, tp_divisors, match", [c[1:] for c in BAD_LAYOUTS],
                         ids=[c[0] for c in BAD_LAYOUTS])
def test_bad_layout(sections, world_size, tp_divisors, match):
    cfg = make_cfg(**sections)
    with pytest.raises(ValueError, match=match):
        resolve_placements(cfg, world_size, tp_divisors)


def test_pipelined_layout_accepted_at_the_limits():
    # 4 micro-batches for 2 pp ranks x 2 stages each; Interleaved with n_mb % pp == 0.
    cfg = make_cfg({"vision": vision(ranks=1), "language": language(ranks=2, pp=2)},
                   parallelism={"pipeline_schedule": "Interleaved1F1B", "stages_per_rank": 2})
    lm = resolve_placements(cfg, 3, {})["language"]
    assert layout(lm) == (1, 2, 2, 1, 1, 1)


# --------------------------------------------------------------------------------------------
# Placement coordinates and Topology's view of one rank (no process group needed)


def test_coords_rank_at_round_trip():
    p = Placement(name="lm", start=3, size=16, pp=2, dp_replicate=2, dp_shard=2, tp=2, feeds="")
    assert p.coords_of(3) == {"pp": 0, "dp_replicate": 0, "dp_shard": 0, "tp": 0}
    assert p.coords_of(4) == {"pp": 0, "dp_replicate": 0, "dp_shard": 0, "tp": 1}  # tp innermost
    assert p.coords_of(5) == {"pp": 0, "dp_replicate": 0, "dp_shard": 1, "tp": 0}
    assert p.coords_of(7) == {"pp": 0, "dp_replicate": 1, "dp_shard": 0, "tp": 0}
    assert p.coords_of(18) == {"pp": 1, "dp_replicate": 1, "dp_shard": 1, "tp": 1}
    assert p.rank_at(pp=1, dp_replicate=0, dp_shard=1, tp=0) == 3 + 8 + 2
    seen = set()
    for rank in p.ranks:
        coords = p.coords_of(rank)
        assert p.rank_at(**coords) == rank
        seen.add(tuple(coords[a] for a in MESH_AXES))
    assert len(seen) == 16


@pytest.mark.parametrize("rank", [2, 19])
def test_coords_of_rank_outside_module(rank):
    p = Placement(name="lm", start=3, size=16, pp=2, dp_replicate=2, dp_shard=2, tp=2, feeds="")
    match = rf"rank {rank} is not in module 'lm' \(ranks range\(3, 19\)\)"
    with pytest.raises(ValueError, match=match):
        p.coords_of(rank)


def _pipelined_topology(rank: int) -> Topology:
    cfg = make_cfg({"vision": vision(ranks=2), "language": language(ranks=8, pp=2, tp=2)},
                   training={"global_batch_size": 8, "micro_batch_size": 1})
    placements = resolve_placements(cfg, 10, {})
    return Topology(rank=rank, world_size=10, colocated=False, placements=placements, meshes={},
                    language="language", n_microbatches=4)


def test_topology_roles_without_process_group():
    topo = _pipelined_topology(1)
    assert topo.my_modules == ["vision"] and topo.dp_rank("vision") == 1
    assert topo.is_first_stage("vision") and topo.is_last_stage("vision")
    # language ranks 2..9 as (pp 2, dp_shard 2, tp 2): rank 2 + 4*pp + 2*dp_shard + tp
    topo = _pipelined_topology(2 + 4 * 1 + 2 * 1 + 0)
    assert topo.my_modules == ["language"]
    assert topo.coords("language") == {"pp": 1, "dp_replicate": 0, "dp_shard": 1, "tp": 0}
    assert topo.dp_rank("language") == 1
    assert not topo.is_first_stage("language") and topo.is_last_stage("language")
    topo = _pipelined_topology(3)
    assert topo.is_first_stage("language") and not topo.is_last_stage("language")
    assert topo.dp_rank("language") == 0
    assert topo.describe() == "vision[0..1] dp_shard=2 | language[2..9] pp=2 dp_shard=2 tp=2"


def test_dp_rank_flattens_replicate_over_shard():
    p = Placement(name="lm", start=0, size=12, pp=1, dp_replicate=2, dp_shard=3, tp=2, feeds="")
    topo = Topology(rank=0, world_size=12, colocated=True, placements={"lm": p}, meshes={},
                    language="lm", n_microbatches=1)
    dp_ranks = []
    for rank in range(12):
        topo.rank = rank
        dp_ranks.append(topo.dp_rank("lm"))
    assert dp_ranks == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert topo.describe() == "colocated: lm[0..11] dp_replicate=2 dp_shard=3 tp=2"


# --------------------------------------------------------------------------------------------
# build_topology on 6 gloo processes


WORKER = textwrap.dedent('''
    """Builds three layouts on 6 ranks in the same order everywhere, reduces over every axis."""
    import json
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from titan_mimo.config_loader import config_from_dict
    from titan_mimo.distributed import init_distributed
    from titan_mimo.topology import MESH_AXES, build_topology, resolve_placements

    VISION = {"model": "vit/debug", "feeds": "language", "placeholder_id": 1}
    LANGUAGE = {"model": "hybrid_lm/debug"}
    LAYOUTS = {
        "split": {"modules": {"vision": {**VISION, "ranks": 2},
                              "language": {**LANGUAGE, "ranks": 4, "dp_shard": 2, "tp": 2}}},
        "pipelined": {"modules": {"vision": {**VISION, "ranks": 2, "tp": 2},
                                  "language": {**LANGUAGE, "ranks": 4, "pp": 2}}},
        "colocated": {"modules": {"vision": {**VISION, "tp": 2}, "language": {**LANGUAGE, "tp": 2}},
                      "parallelism": {"colocated": True},
                      "training": {"global_batch_size": 12, "micro_batch_size": 2}},
    }

    init_distributed(torch.device("cpu"), timeout_seconds=60)
    rank = dist.get_rank()
    result = {}
    for layout_name, data in LAYOUTS.items():
        cfg = config_from_dict(data)
        placements = resolve_placements(cfg, dist.get_world_size(), {"vision": {"n_heads": 2}})
        topo = build_topology(cfg, placements, "cpu")
        out = {"my_modules": topo.my_modules, "describe": topo.describe(),
               "colocated": topo.colocated, "n_microbatches": topo.n_microbatches, "modules": {}}
        for name in topo.my_modules:
            mesh = topo.meshes[name]
            members, sums = {}, {}
            for axis in MESH_AXES:
                group = mesh.get_group(axis)
                t = torch.tensor([float(rank)])
                dist.all_reduce(t, group=group)
                sums[axis] = t.item()
                members[axis] = dist.get_process_group_ranks(group)
            out["modules"][name] = {
                "coords": topo.coords(name), "dp_rank": topo.dp_rank(name),
                "is_first_stage": topo.is_first_stage(name),
                "is_last_stage": topo.is_last_stage(name),
                "mesh": mesh.mesh.tolist(), "members": members, "sums": sums,
            }
        result[layout_name] = out
    world = torch.tensor([float(rank)])
    dist.all_reduce(world)
    result["world_sum"] = world.item()
    Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()
''')


def _axes(pp, dp_replicate, dp_shard, tp):
    return {"pp": pp, "dp_replicate": dp_replicate, "dp_shard": dp_shard, "tp": tp}


def _role(coords, dp_rank, first, last, **members):
    """Expected view of one module from one rank; members lists each axis's group ranks."""
    return {"coords": _axes(*coords), "dp_rank": dp_rank, "is_first_stage": first,
            "is_last_stage": last, "members": members}


# Per layout and rank: {module: expected role}. Axes not listed have size 1 (group = own rank).
EXPECTED = {
    "split": [  # vision 0-1 (dp_shard 2) | language 2-5 (dp_shard 2 x tp 2)
        {"vision": _role((0, 0, 0, 0), 0, True, True, dp_shard=[0, 1])},
        {"vision": _role((0, 0, 1, 0), 1, True, True, dp_shard=[0, 1])},
        {"language": _role((0, 0, 0, 0), 0, True, True, dp_shard=[2, 4], tp=[2, 3])},
        {"language": _role((0, 0, 0, 1), 0, True, True, dp_shard=[3, 5], tp=[2, 3])},
        {"language": _role((0, 0, 1, 0), 1, True, True, dp_shard=[2, 4], tp=[4, 5])},
        {"language": _role((0, 0, 1, 1), 1, True, True, dp_shard=[3, 5], tp=[4, 5])},
    ],
    "pipelined": [  # vision 0-1 (tp 2) | language 2-5 (pp 2 x dp_shard 2)
        {"vision": _role((0, 0, 0, 0), 0, True, True, tp=[0, 1])},
        {"vision": _role((0, 0, 0, 1), 0, True, True, tp=[0, 1])},
        {"language": _role((0, 0, 0, 0), 0, True, False, pp=[2, 4], dp_shard=[2, 3])},
        {"language": _role((0, 0, 1, 0), 1, True, False, pp=[3, 5], dp_shard=[2, 3])},
        {"language": _role((1, 0, 0, 0), 0, False, True, pp=[2, 4], dp_shard=[4, 5])},
        {"language": _role((1, 0, 1, 0), 1, False, True, pp=[3, 5], dp_shard=[4, 5])},
    ],
    "colocated": [  # both modules on 0-5 as (dp_shard 3 x tp 2)
        {m: _role((0, 0, r // 2, r % 2), r // 2, True, True,
                  dp_shard=[r % 2, r % 2 + 2, r % 2 + 4], tp=[r - r % 2, r - r % 2 + 1])
         for m in ("vision", "language")}
        for r in range(6)
    ],
}
DESCRIBE = {
    "split": "vision[0..1] dp_shard=2 | language[2..5] dp_shard=2 tp=2",
    "pipelined": "vision[0..1] tp=2 | language[2..5] pp=2 dp_shard=2",
    "colocated": "colocated: vision[0..5] dp_shard=3 tp=2 | language[0..5] dp_shard=3 tp=2",
}
N_MICROBATCHES = {"split": 2, "pipelined": 2, "colocated": 2}


def test_build_topology_six_ranks(tmp_path):
    worker = tmp_path / "topology_worker.py"
    worker.write_text(WORKER)
    torchrun(6, worker, str(tmp_path), timeout=120)
    for rank in range(6):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["world_sum"] == 15.0
        for layout_name, per_rank in EXPECTED.items():
            got = result[layout_name]
            expected = per_rank[rank]
            assert got["my_modules"] == list(expected), (layout_name, rank)
            assert got["describe"] == DESCRIBE[layout_name]
            assert got["colocated"] == (layout_name == "colocated")
            assert got["n_microbatches"] == N_MICROBATCHES[layout_name]
            for name, role in expected.items():
                mod = got["modules"][name]
                where = (layout_name, rank, name)
                assert mod["coords"] == role["coords"], where
                assert mod["dp_rank"] == role["dp_rank"], where
                assert mod["is_first_stage"] == role["is_first_stage"], where
                assert mod["is_last_stage"] == role["is_last_stage"], where
                for axis in MESH_AXES:
                    members = role["members"].get(axis, [rank])
                    assert mod["members"][axis] == members, (*where, axis)
                    assert mod["sums"][axis] == float(sum(members)), (*where, axis)


@pytest.mark.parametrize("loss, pp, tp, fused", [("auto", 1, 1, True), ("auto", 2, 1, True), ("auto", 1, 2, False),
                                                 ("logits", 1, 1, False), ("fused", 2, 1, True)])
def test_fused_loss_where_it_applies(loss, pp, tp, fused):
    from titan_mimo.topology import uses_fused_loss

    cfg = make_cfg({"vision": vision(ranks=2), "language": language(ranks=2 * pp * tp, pp=pp, tp=tp)},
                   training={"loss": loss})
    placements = resolve_placements(cfg, 2 + 2 * pp * tp, {})
    assert uses_fused_loss(cfg, placements["language"]) is fused


# --------------------------------------------------------------------------------------------
# expert parallelism


def test_expert_mesh_borrows_ep_from_dp_shard_and_tp():
    """ep takes the innermost ranks of each stage's (dp_replicate, dp_shard, tp) order: tp first."""
    cfg = make_cfg({"vision": vision(ranks=2), "language": language(ranks=8, pp=2, tp=2, ep=2)})
    lm = resolve_placements(cfg, 10, {})["language"]
    assert (lm.dp_shard, lm.ep, lm.has_expert_mesh, lm.expert_shape) == (2, 2, True, (2, 2, 2))
    cfg = make_cfg({"vision": vision(ranks=2), "language": language(ranks=4)})
    assert not resolve_placements(cfg, 6, {})["language"].has_expert_mesh


@pytest.mark.parametrize("lm, message", [
    ({"ranks": 4, "tp": 2, "ep": 8}, "ep = 8 must divide dp_shard\\*tp = 2\\*2 = 4"),
    ({"ranks": 6, "ep": 4}, "ep = 4 must divide dp_shard\\*tp = 6\\*1 = 6"),
])
def test_ep_must_divide_dp_shard_times_tp(lm, message):
    cfg = make_cfg({"vision": vision(ranks=2), "language": language(**lm)})
    with pytest.raises(ValueError, match=f"modules.language: {message}"):
        resolve_placements(cfg, 2 + lm["ranks"], {})


def test_ep_is_for_the_language_model_only():
    with pytest.raises(ValueError, match="ep = 2: expert parallelism applies to the language module"):
        make_cfg({"vision": vision(ranks=2, ep=2), "language": language(ranks=2)})
