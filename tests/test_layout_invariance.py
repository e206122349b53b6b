"""Layout invariance (DESIGN.md invariant 1): every placement trains exactly like the single-rank
colocated run. One torchrun launch per world size runs all its layouts; each is compared with
the single-rank reference on step-0 gradients, per-step losses and global gradient norms, and
final parameters.

Also here, because they read the same runs: validation (forward-only through the same schedule)
gives the single-rank loss in every layout; the schedule-order check (encoder forward of i+1
overlaps the language model's work on i; encoder backward of i runs before its last forward);
the pipeline-bubble and bridge-wait metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from launcher import REPO, torchrun

WORKER = REPO / "tests/workers/layout_worker.py"
BASE = "train_configs/debug_cpu.toml"
TWO = "train_configs/debug_two_encoders_cpu.toml"
STEPS = 3

MOE = {"modules.language.model": "hybrid_lm/debug_moe"}
"""The MoE language model (Mamba2, MoE, attention and MLP blocks; 8 experts top-2 in 2 groups,
the auxiliary loss on, a correction-bias rate that changes routing decisions within the run)."""

REFERENCES = {
    "base": (BASE, {}),
    "moe": (BASE, MOE),
    "moe_text_only": (BASE, {**MOE, "data.text_only_fraction": 0.5}),
    # The bias update off: its losses part from "moe"'s after step 1 only if the update changed
    # some routing decision (the bias steers the choice, never the values).
    "moe_no_bias_update": (BASE, {**MOE, "modules.language.model_args.moe_bias_update_rate": 0.0}),
    "text_only": (BASE, {"data.text_only_fraction": 0.5}),
    "frozen": (BASE, {"modules.vision.frozen": True}),
    "two_encoders": (TWO, {}),
    "order": (BASE, {"training.micro_batch_size": 1}),
    "blind": (BASE, {"training.zero_encoder_embeddings": True}),
}

# name: (world size, reference, overrides on top of the reference's)
LAYOUTS = {
    "fan_in": (3, "base", {"modules.vision.ranks": 2, "modules.language.ranks": 1}),
    "fan_out": (3, "base", {"modules.vision.ranks": 1, "modules.language.ranks": 2}),
    "dp2_dp2": (4, "base", {}),
    # The reference computes its loss fused (chunked head + cross-entropy); this one from logits.
    "dp2_dp2_logits_loss": (4, "base", {"training.loss": "logits"}),
    "dp2_dp2_activation_checkpoint": (4, "base", {"modules.vision.activation_checkpoint": "full",
                                                  "modules.language.activation_checkpoint": "full"}),
    # Every second MLP block of the LM (counted over the whole model, so per stage here) and
    # every second ViT block checkpointed.
    "pp2_selective_ac": (4, "base", {"modules.language.pp": 2,
                                     "modules.language.activation_checkpoint": "selective",
                                     "modules.language.ac_layers": "-", "modules.language.ac_every": 2,
                                     "modules.vision.activation_checkpoint": "selective",
                                     "modules.vision.ac_every": 2}),
    "pp2_1f1b": (4, "base", {"modules.language.pp": 2}),
    "pp2_1f1b_reshard_always": (4, "base", {"modules.language.pp": 2, "training.loss": "logits",
                                            "modules.language.reshard_after_forward": "always"}),
    "dp2_dp2_reshard_never": (4, "base", {"modules.vision.reshard_after_forward": "never",
                                          "modules.language.reshard_after_forward": "never"}),
    # Pipelined layouts use the chunked loss on the last stage's hidden states; this one logits.
    "pp2_1f1b_logits_loss": (4, "base", {"modules.language.pp": 2, "training.loss": "logits"}),
    "pp2_gpipe": (4, "base", {"modules.language.pp": 2, "parallelism.pipeline_schedule": "GPipe"}),
    "pp2_interleaved": (4, "base", {"modules.language.pp": 2, "parallelism.stages_per_rank": 2,
                                    "parallelism.pipeline_schedule": "Interleaved1F1B"}),
    "tp2_tp2_sp": (4, "base", {"modules.vision.tp": 2, "modules.language.tp": 2}),
    "no_image_microbatches": (4, "text_only", {}),
    "frozen_encoder": (4, "frozen", {}),
    "two_encoders": (4, "two_encoders", {}),
    "order": (4, "order", {}),
    # The zeroed-embeddings ablation across the bridge (once hung: no gradient went back).
    "zeroed_embeddings": (4, "blind", {}),
    # 8 micro-batches: torch's Interleaved1F1B runs stage 0 only 4 forwards ahead of its backwards.
    "pp2_interleaved_8mb": (3, "order", {"modules.vision.ranks": 1, "modules.language.ranks": 2,
                                         "modules.language.pp": 2, "parallelism.stages_per_rank": 2,
                                         "parallelism.pipeline_schedule": "Interleaved1F1B"}),
    # FSDP over dp 2 inside each pipeline stage: the last stage's head gradient (taken in the
    # chunked loss, outside the stage's forward) must still be reduce-scattered.
    "lm_pp2_dp2": (6, "base", {"modules.vision.ranks": 2, "modules.language.ranks": 4,
                               "modules.language.pp": 2}),
    "lm_dp2_tp2": (6, "base", {"modules.vision.ranks": 2, "modules.language.ranks": 4,
                               "modules.language.tp": 2}),
    # Expert parallelism: experts over the 2 language ranks (borrowed from dp_shard); with full
    # activation checkpointing (a block's tokens are counted again in its recompute); over
    # the TP ranks under sequence parallelism; in each pipeline stage (1F1B, interleaved); with
    # fan-in at the bridge (vision dp 2 -> language tp 2 = dp 1); colocated (expert_dp 2 x ep 2);
    # and with micro-batches that carry no image.
    "moe_ep2": (4, "moe", {"modules.language.ep": 2}),
    "moe_ep2_activation_checkpoint": (4, "moe", {"modules.language.ep": 2,
                                                 "modules.language.activation_checkpoint": "full"}),
    "moe_ep2_tp2": (6, "moe", {"modules.vision.ranks": 2, "modules.language.ranks": 4,
                               "modules.language.tp": 2, "modules.language.ep": 2}),
    "moe_ep2_pp2_1f1b": (6, "moe", {"modules.vision.ranks": 2, "modules.language.ranks": 4,
                                    "modules.language.pp": 2, "modules.language.ep": 2}),
    "moe_ep2_pp2_interleaved": (6, "moe", {"modules.vision.ranks": 2, "modules.language.ranks": 4,
                                           "modules.language.pp": 2, "modules.language.ep": 2,
                                           "parallelism.stages_per_rank": 2, "training.micro_batch_size": 1,
                                           "parallelism.pipeline_schedule": "Interleaved1F1B"}),
    "moe_fan_in_ep2_tp2": (4, "moe", {"modules.language.tp": 2, "modules.language.ep": 2}),
    "moe_colocated_ep2": (4, "moe", {"parallelism.colocated": True, "modules.language.ep": 2}),
    "moe_ep2_no_image_microbatches": (4, "moe_text_only", {"modules.language.ep": 2}),
    # One rank with FSDP2 wrapping both modules anyway (the reference runs them unwrapped).
    "fsdp_one_rank": (1, "base", {"parallelism.fsdp_one_rank": True}),
}
BF16 = ("bf16_dp2_dp2", 4, "base", {"training.mixed_precision": "bf16"})
BF16_ONE_RANK = ("bf16_one_rank", 1, "base", {"training.mixed_precision": "bf16"})
"""bf16 on one rank: both modules unwrapped, their forwards under autocast."""


# Evaluation between steps 1 and 2 in every case (validation_loss test). The optimizer runs
# with the config's eps (1e-8): with the gradient norm counting every shard once, final
# parameters agree to <= 5e-5 in every layout (2026-11-24), even where Adam amplifies
# near-zero gradients.
TEST_OVERRIDES = {"validation.enable": True, "validation.steps": 1}


def _case(name: str, ref: str, extra: dict) -> dict:
    config, overrides = REFERENCES[ref]
    return {"name": name, "config": config, "overrides": {**TEST_OVERRIDES, **overrides, **extra},
            "steps": STEPS}


def _launch(nproc: int, cases: list[dict], out: Path) -> None:
    spec = out / f"cases_{nproc}.json"
    spec.write_text(json.dumps(cases))
    torchrun(nproc, WORKER, str(spec), str(out), timeout=600)


def _load(out: Path, name: str) -> dict:
    case_dir = out / name
    merged = {"init": {}, "grads": {}, "params": {}}
    for f in sorted(case_dir.glob("rank*.pt")):
        part = torch.load(f, weights_only=True)
        for k in merged:
            merged[k].update(part[k])
    merged["losses"] = json.loads((case_dir / "losses.json").read_text())
    merged["grad_norms"] = json.loads((case_dir / "grad_norms.json").read_text())
    merged["metrics"] = json.loads((case_dir / "metrics.json").read_text())
    merged["spans"] = {int(f.stem[5:]): json.loads(f.read_text()) for f in case_dir.glob("spans*.json")}
    return merged


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("layouts")
    by_world: dict[int, list[dict]] = {1: [_case(f"ref_{r}", r, {}) for r in REFERENCES]}
    for name, (world, ref, extra) in LAYOUTS.items():
        by_world.setdefault(world, []).append(_case(name, ref, extra))
    for name, world, ref, extra in (BF16, BF16_ONE_RANK):
        by_world[world].append(_case(name, ref, extra))
    for world, cases in sorted(by_world.items()):
        _launch(world, cases, out)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float) -> float:
    """Relative error, with a floor on the denominator: some gradients are zero in exact
    arithmetic (a key bias shifts every score of a query equally) and hold only round-off."""
    return float((a - b).norm() / max(float(b.norm()), floor))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_rank(runs: Path, layout: str) -> None:
    """Step-0 gradients, per-step losses and global gradient norms (the norm sets the clip
    coefficient of every parameter, so a piece counted twice or not at all shows here first)."""
    _, ref_name, _ = LAYOUTS[layout]
    got, ref = _load(runs, layout), _load(runs, f"ref_{ref_name}")
    assert got["grads"].keys() == ref["grads"].keys()
    total = float(torch.stack([g.norm() for g in ref["grads"].values()]).norm())
    for fqn, g in ref["grads"].items():
        assert _rel(got["grads"][fqn], g, 1e-4 * total) <= 1e-5, f"{layout}: step-0 grad of {fqn}"
    for step, (a, b) in enumerate(zip(got["losses"], ref["losses"])):
        tol = 1e-5 if step == 0 else 1e-4
        assert abs(a - b) <= tol * abs(b), f"{layout}: loss at step {step + 1}: {a} vs {b}"
    for step, (a, b) in enumerate(zip(got["grad_norms"], ref["grad_norms"], strict=True)):
        tol = 1e-5 if step == 0 else 1e-4
        assert abs(a - b) <= tol * abs(b), f"{layout}: grad norm at step {step + 1}: {a} vs {b}"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_final_params_match_single_rank(runs: Path, layout: str) -> None:
    _, ref_name, _ = LAYOUTS[layout]
    got, ref = _load(runs, layout), _load(runs, f"ref_{ref_name}")
    assert got["params"].keys() == ref["params"].keys() and ref["params"]
    for fqn, p in ref["params"].items():
        diff = float((got["params"][fqn] - p).abs().max())
        assert diff <= 1e-3, f"{layout}: final {fqn} differs by {diff}"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_validation_loss_matches_single_rank(runs: Path, layout: str) -> None:
    """Forward-only evaluation on the held-out split, run between training steps 1 and 2."""
    _, ref_name, _ = LAYOUTS[layout]
    got, ref = _load(runs, layout), _load(runs, f"ref_{ref_name}")
    a, b = got["metrics"]["val_loss"], ref["metrics"]["val_loss"]
    assert abs(a - b) <= 1e-5 * abs(b), f"{layout}: val_loss {a} vs {b}"
    # Held out: not the training batch's loss (evaluated after step 1, between losses 1 and 2).
    assert 0 < b < 10 and b not in ref["losses"]


PIPELINED = {"pp2_1f1b": 1 / 5, "pp2_gpipe": 1 / 5, "pp2_interleaved": 1 / 9}
"""(p - 1) / (v m + p - 1) with p = 2 ranks, m = 4 micro-batches, v stages per rank."""


@pytest.mark.parametrize("layout", ["ref_base", "dp2_dp2", "tp2_tp2_sp", *PIPELINED])
def test_bubble_and_bridge_wait_metrics(runs: Path, layout: str) -> None:
    rec = _load(runs, layout)["metrics"]
    assert rec["step"] == STEPS and rec["step_time_s"] > 0
    if layout in PIPELINED:
        assert rec["bubble_fraction_theory"] == pytest.approx(PIPELINED[layout])
        # Each language rank waits on its neighbour at least during the ramp-up/down.
        assert 0 < rec["bubble_fraction"] < 1 and 0 < rec["bubble_s"] < rec["step_time_s"]
    else:
        assert rec["bubble_s"] == rec["bubble_fraction"] == rec["bubble_fraction_theory"] == 0
    if layout == "ref_base":  # colocated: no bridge
        assert rec["bridge_wait_s"] == 0
    else:  # encoder ranks block on every returning gradient
        assert 0 < rec["bridge_wait_s"] < rec["step_time_s"]


@pytest.mark.parametrize("layout", ["fan_in", "pp2_interleaved", "tp2_tp2_sp", "lm_dp2_tp2"])
def test_init_is_identical_in_every_placement(runs: Path, layout: str) -> None:
    """Weights depend on (seed, name) only: FSDP/TP/PP shards reassemble to the very same bits."""
    got, ref = _load(runs, layout)["init"], _load(runs, "ref_base")["init"]
    assert got.keys() == ref.keys() and ref
    for fqn, p in ref.items():
        assert torch.equal(got[fqn], p), fqn


def test_bias_update_changes_routing(runs: Path) -> None:
    """The correction-bias update acts within the test's steps: with it off, step 1 is the same
    but later losses differ, i.e. some token chose other experts (the bias changes nothing else).
    So the MoE layouts above agree with the reference on a run where the update matters."""
    on, off = _load(runs, "ref_moe")["losses"], _load(runs, "ref_moe_no_bias_update")["losses"]
    assert on[0] == off[0]
    assert on[-1] != off[-1], (on, off)


def test_expert_load_metrics(runs: Path) -> None:
    """Every MoE layer's max / mean tokens per expert over the global batch, the same in every
    layout (the counts are world sums), and >= 1."""
    ref = _load(runs, "ref_moe")["metrics"]
    layers = [k for k in ref if k.startswith("moe/load_max_over_mean/layer")]
    assert sorted(layers) == [f"moe/load_max_over_mean/layer{i}" for i in (1, 3, 5)]
    assert ref["moe/load_max_over_mean"] == max(ref[k] for k in layers) >= 1.0
    for layout in ("moe_ep2", "moe_ep2_tp2", "moe_ep2_pp2_1f1b", "moe_colocated_ep2"):
        got = _load(runs, layout)["metrics"]
        for k in layers:
            assert got[k] == pytest.approx(ref[k], rel=1e-6), (layout, k)


def test_frozen_encoder_has_no_gradients_and_keeps_its_weights(runs: Path) -> None:
    got, base = _load(runs, "frozen_encoder"), _load(runs, "ref_base")
    assert not [k for k in got["grads"] if k.startswith("vision.")]
    for fqn, p in got["params"].items():
        if fqn.startswith("vision."):
            # Same seed, same name -> same init as the trainable reference before its update.
            assert fqn in base["params"]
    vision_moved = [k for k in base["params"] if k.startswith("vision.")
                    and not torch.equal(base["params"][k], got["params"][k])]
    assert vision_moved, "the trainable reference's vision weights should have changed"


def test_some_microbatch_has_no_images() -> None:
    """The text-only layout really exercises a micro-batch with no images on some LM replica."""
    from titan_mimo.build import module_args
    from titan_mimo.config_loader import load_config
    from titan_mimo.data.plan import SamplePlan
    from titan_mimo.data.build import build_dataset

    cfg = load_config(["--config", str(REPO / BASE), "--data.text_only_fraction=0.5"])
    ds = build_dataset(cfg, module_args(cfg))
    plan = SamplePlan(global_batch_size=8, micro_batch_size=2, language_dp=2)
    empty = [(s, mb, r) for s in range(STEPS) for mb in range(plan.n_microbatches) for r in range(2)
             if not any(ds.sample(i, with_images=False).tokens.eq(1).any()
                        for i in plan.owned(s, mb, 2, r))]
    assert empty


def test_fan_in_gets_uneven_rows_per_encoder_rank() -> None:
    """The fan-in layout really exercises images of different sizes per sample: in some
    micro-batch its two encoder ranks (one sample each) send the one language rank different
    row counts."""
    from titan_mimo.build import module_args
    from titan_mimo.config_loader import load_config
    from titan_mimo.data.plan import SamplePlan
    from titan_mimo.data.build import build_dataset

    cfg = load_config(["--config", str(REPO / BASE)])
    ds = build_dataset(cfg, module_args(cfg))
    plan = SamplePlan(global_batch_size=8, micro_batch_size=2, language_dp=1)
    rows = [[int(ds.sample(i, with_images=False).tokens.eq(1).sum()) for i in plan.microbatch_indices(s, mb)]
            for s in range(STEPS) for mb in range(plan.n_microbatches)]
    assert any(len(set(r)) > 1 for r in rows), rows


@pytest.mark.parametrize("case", [BF16[0], BF16_ONE_RANK[0]])
def test_bf16_tracks_fp32(runs: Path, case: str) -> None:
    """bf16 with FSDP's bf16 parameters (dp 2) and with autocast over fp32 parameters (one
    rank, unwrapped) both stay within 2% of the fp32 losses, and are not fp32 in disguise."""
    got, ref = _load(runs, case), _load(runs, "ref_base")
    for a, b in zip(got["losses"], ref["losses"]):
        assert abs(a - b) <= 0.02 * abs(b), (got["losses"], ref["losses"])
    assert got["losses"] != ref["losses"]


def _work(spans: list[dict]) -> list[tuple[str, int, float]]:
    """(F or B, micro-batch, end time) of a rank's forwards and backwards, in the order they ran."""
    return [({"forward": "F", "backward": "B"}[s["kind"]], s["mb"], s["end"])
            for s in spans if s["kind"] in ("forward", "backward")]


def _work_order(spans: list[dict]) -> list[tuple[str, int]]:
    return [(op, mb) for op, mb, _ in _work(spans)]


def test_schedule_overlaps_across_the_bridge(runs: Path) -> None:
    """vision dp 2 | language dp 2 with 4 micro-batches. Each encoder rank runs forward of i+1
    before the gradient of i has come back (so it overlaps the language model's work on i), and
    back-propagates i before its last forward (1F1B across the boundary, not all-F-then-all-B).
    Order on the encoder rank is deterministic; wall-clock order across ranks is only checked
    where it is causal: the language model's backward of i ends after the encoder's forward of i.
    """
    spans = _load(runs, "order")["spans"]
    n_mb = 4
    for enc_rank, lm_rank in ((0, 2), (1, 3)):
        order = _work_order(spans[enc_rank])
        assert sorted(order) == sorted([(op, i) for op in "FB" for i in range(n_mb)])
        for i in range(n_mb - 1):
            assert order.index(("F", i + 1)) < order.index(("B", i)), order
        assert order.index(("B", 0)) < order.index(("F", n_mb - 1)), order
        enc = {(op, mb): end for op, mb, end in _work(spans[enc_rank])}
        lm = {(op, mb): end for op, mb, end in _work(spans[lm_rank])}
        for i in range(n_mb):
            assert enc[("F", i)] <= lm[("B", i)]


def test_encoder_lead_follows_the_interleaved_schedule(runs: Path) -> None:
    """With Interleaved1F1B the encoder's lead comes from the schedule's own action list (stage 0
    runs 4 of the 8 micro-batches ahead), not "every micro-batch": the encoder back-propagates
    micro-batch 0 before its last forward, and never sends more than lead = 5 ahead."""
    spans = _load(runs, "pp2_interleaved_8mb")["spans"]
    n_mb = 8
    order = _work_order(spans[0])  # the one encoder rank
    assert sorted(order) == sorted([(op, i) for op in "FB" for i in range(n_mb)])
    assert order.index(("B", 0)) < order.index(("F", n_mb - 1)), order
    for i in range(n_mb - 5):
        assert order.index(("B", i)) < order.index(("F", i + 5)), order


@pytest.mark.parametrize("layout, expected", [
    ("dp2_dp2", {"vision": True, "language": True, "language:second": False}),
    ("dp2_dp2_reshard_never", {"vision": False, "language": False, "language:second": True}),
    ("pp2_1f1b", {"vision": True, "language": False, "language:second": True}),
    ("pp2_1f1b_reshard_always", {"vision": True, "language": True, "language:second": False}),
])
def test_reshard_after_forward_takes_effect(runs: Path, layout: str, expected: dict) -> None:
    """FSDP frees (or keeps) each block's gathered parameters after its forward as
    `reshard_after_forward` says (by default it frees them, except on pipelined LM stages), and a
    module that keeps them keeps them through the micro-batches' backwards until the step's last
    (the language model's second forward finds them gathered: one all-gather per step)."""
    seen = {}
    for f in (runs / layout).glob("resharded*.json"):
        seen.update(json.loads(f.read_text()))
    assert {k: v for k, v in seen.items() if k in expected} == expected


TRITON = {"modules.language.model_args.mamba_kernels": "triton"}
"""The LM's Mamba2 mixers on titan_mimo's Triton kernels (causal conv + SiLU, gated RMSNorm), run
on CPU under Triton's interpreter: they read their rank's local tensors (FSDP's gathered
parameters; under TP a slice of the channels and groups, the in-projection's local output)."""
TRITON_LAYOUT = {"modules.vision.tp": 2, "modules.language.tp": 2}
"""tp2_tp2_sp's placement: each rank's kernels see a slice of the channels and groups (FSDP hands
them the gathered parameters, as on one rank)."""


@pytest.fixture(scope="module")
def triton_run(tmp_path_factory) -> dict:
    """One step of the layout on the Triton kernels, in a launch of its own: the interpreter is
    process-wide (TRITON_INTERPRET=1 before the kernels are defined) and slow."""
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("triton_layout")
    case = {"name": "triton_tp2_tp2_sp", "config": BASE, "steps": 1, "overrides": {**TRITON, **TRITON_LAYOUT}}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRITON_INTERPRET", "1")
        _launch(4, [case], out)
    return _load(out, "triton_tp2_tp2_sp")


def test_triton_mamba_kernels_under_tp_match_the_single_rank_torch_run(runs: Path, triton_run: dict) -> None:
    """The first step's loss, gradient norm and gradients of the TP layout on the Triton kernels
    against the one-rank run on PyTorch's (the reference of every layout): the same to float32
    round-off of the kernels' other summation order (a wrong slice would be off by O(1))."""
    got, ref = triton_run, _load(runs, "ref_base")
    assert got["grads"].keys() == ref["grads"].keys()
    assert any(".mixer.conv_x." in k for k in ref["grads"]) and any(".mixer.norm." in k for k in ref["grads"])
    total = float(torch.stack([g.norm() for g in ref["grads"].values()]).norm())
    for fqn, g in ref["grads"].items():
        assert _rel(got["grads"][fqn], g, 1e-4 * total) <= 1e-4, f"grad of {fqn}"
    assert got["losses"][0] == pytest.approx(ref["losses"][0], rel=1e-5)
    assert got["grad_norms"][0] == pytest.approx(ref["grad_norms"][0], rel=1e-5)
