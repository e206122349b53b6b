"""End-to-end runs of `titan_mimo.train` as users launch it: the mock task is learnable only
through the vision path, outputs follow the contract, and a dead rank stops the whole job."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from launcher import REPO, start, torchrun

CONFIG = "train_configs/debug_cpu.toml"


def _launch(nproc: int, out: Path, *overrides: str) -> subprocess.Popen:
    return start(nproc, "-m", "titan_mimo.train", "--config", CONFIG, f"--job.dump_folder={out}", *overrides)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_only_through_the_vision_path(tmp_path: Path) -> None:
    """Single-rank colocated run: loss ends below 50% of its first value; with the image
    embeddings zeroed it stays near ln(num_values), the floor of guessing the caption."""
    runs = {name: _launch(1, tmp_path / name, "--parallelism.colocated=true", "--metrics.log_freq=1", *extra)
            for name, extra in [("vision", ()), ("blind", ("--training.zero_encoder_embeddings=true",))]}
    for name, proc in runs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-5000:]
    seen, blind = _losses(tmp_path / "vision"), _losses(tmp_path / "blind")
    assert len(seen) == 200
    final_seen = sum(seen[-10:]) / 10
    final_blind = sum(blind[-10:]) / 10
    assert final_seen < 0.5 * seen[0], (seen[0], final_seen)
    assert final_blind > 0.45 * blind[0], (blind[0], final_blind)
    assert final_seen < final_blind - 0.4, (final_seen, final_blind)


def test_moe_config_learns_the_mock_task(tmp_path: Path) -> None:
    """train_configs/debug_moe_cpu.toml (the MoE language model, its experts over 2 ranks, vision
    on 2 others) learns: the last 10 losses average below 50% of the first."""
    proc = start(4, "-m", "titan_mimo.train", "--config", "train_configs/debug_moe_cpu.toml",
                 f"--job.dump_folder={tmp_path}", "--metrics.log_freq=1")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-5000:]
    losses = _losses(tmp_path)
    assert len(losses) == 200
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0], (losses[0], losses[-10:])


def test_outputs_follow_the_contract(tmp_path: Path) -> None:
    # Logging every 5 steps, validating every 2: a validation step is logged too (with its
    # val_loss), as is the last step.
    # Step 3 profiled (kernels only: on CPU, which has no kernels to record alone, the host ops).
    proc = _launch(4, tmp_path, "--training.steps=3", "--metrics.log_freq=5", "--validation.enable=true",
                   "--validation.freq=2", "--validation.steps=1", "--metrics.profile_step=3",
                   "--metrics.profile_kernels_only=true")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-5000:]
    for rank in range(4):
        assert f"rank {rank} step 3 profile" in output
        assert json.loads((tmp_path / "profile" / f"rank{rank}_step3.json").read_text())["traceEvents"]
    assert "host ops by self CPU time per step:" in output
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]
    assert records[0]["val_loss"] > 0 and "val_loss" not in records[1]
    for r in records:
        for key in ("loss", "grad_norm", "lr", "tokens_per_s", "step_time_s", "bridge_wait_s"):
            assert r[key] >= 0
        # Queuing a step is part of it (on CPU nearly all of it: the host runs the kernels).
        assert 0 < r["host_issue_s"] <= r["step_time_s"] * 1.01
        assert set(r["modules"]) == {"vision", "language"}
        for m in r["modules"].values():
            assert m["memory_gib"] > 0 and m["tflops_per_device"] > 0
            assert m["alloc_retries"] == 0  # a CUDA allocator count: 0 on CPU
    assert (tmp_path / "config.toml").read_text().count("[modules.vision]") == 1
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_bad_config_fails_before_distributed_work(tmp_path: Path) -> None:
    proc = _launch(1, tmp_path, "--training.micro_batch_size=3")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "global_batch_size = 8 is not a multiple of micro_batch_size = 3" in output
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("extra", [(), ("--modules.language.model=hybrid_lm/debug_moe", "--modules.language.ep=2")],
                         ids=["dense", "moe_ep2"])
def test_killing_one_rank_ends_the_job(tmp_path: Path, extra: tuple[str, ...]) -> None:
    """A rank that dies mid-run makes every rank exit, non-zero, well within 60 s; with expert
    parallelism its expert-parallel peer is then left waiting in a token dispatch."""
    proc = _launch(4, tmp_path, "--training.steps=100000", "--metrics.log_freq=1", *extra)
    deadline = time.time() + 180
    while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None, "training never started"
        time.sleep(0.5)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 4, children
    os.kill(int(children[2]), signal.SIGKILL)  # a language rank
    killed_at = time.time()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - killed_at < 60, output[-3000:]


def test_nonfinite_loss_stops_the_run_or_skips_the_step(tmp_path: Path) -> None:
    """lr = 1e30 makes step 2's loss NaN: by default the run fails naming the step; with
    skip_nonfinite_steps it logs each skipped step and finishes."""
    common = ("--parallelism.colocated=true", "--training.steps=3", "--metrics.log_freq=1",
              "--optimizer.lr=1e30")
    runs = {"stop": _launch(1, tmp_path / "stop", *common),
            "skip": _launch(1, tmp_path / "skip", *common, "--training.skip_nonfinite_steps=true")}
    outputs = {}
    for name, proc in runs.items():
        outputs[name], _ = proc.communicate(timeout=300)
        outputs[name] = (outputs[name], proc.returncode)
    stop_out, stop_rc = outputs["stop"]
    assert stop_rc != 0
    assert "NonFiniteError: step 2: non-finite loss nan" in stop_out
    assert "set training.skip_nonfinite_steps = true" in stop_out
    skip_out, skip_rc = outputs["skip"]
    assert skip_rc == 0, skip_out[-3000:]
    assert "step 2: non-finite loss nan or grad norm nan: step skipped" in skip_out
    assert "step 3: non-finite loss" in skip_out
    records = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["loss"] == records[0]["loss"] and records[1]["loss"] != records[1]["loss"]  # NaN


# ---- the loop: results read one step late, checkpoints, non-finite steps, stop requests -----

LOOP_WORKER = "tests/workers/loop_worker.py"
LOOP = ["--training.steps=6", "--metrics.log_freq=1", "--metrics.enable_tensorboard=false",
        "--checkpoint.enable=true", "--checkpoint.interval=3"]


def _loop_runs(tmp: Path, nproc: int, cases: list[dict]) -> tuple[Path, str]:
    for case in cases:
        case["argv"] = ["--config", str(REPO / CONFIG), f"--job.dump_folder={tmp / case['name']}",
                        *LOOP, *case.get("argv", [])]
    spec = tmp / "cases.json"
    spec.write_text(json.dumps(cases))
    proc = torchrun(nproc, REPO / LOOP_WORKER, str(spec), str(tmp / "results"), timeout=600)
    return tmp, proc.stdout + proc.stderr


def _loop_result(runs: Path, name: str, rank: int = 0) -> dict:
    return json.loads((runs / "results" / name / f"rank{rank}.json").read_text())


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _saved(out: Path) -> list[int]:
    folder = out / "checkpoint"
    return sorted(int(p.name.removeprefix("step-")) for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def one_rank_loops(tmp_path_factory) -> Path:
    """One process: the same 6 steps (checkpoints at 3 and 6, validation at 4) read late, and
    read at once (skip_nonfinite_steps)."""
    validation = ["--validation.enable=true", "--validation.freq=4", "--validation.steps=1"]
    runs, _ = _loop_runs(tmp_path_factory.mktemp("loop1"), 1, [
        {"name": "late", "argv": validation, "trace": True},
        {"name": "at_once", "argv": [*validation, "--training.skip_nonfinite_steps=true"], "trace": True},
    ])
    return runs


def test_ordinary_steps_are_read_after_the_next_is_queued(one_rank_loops: Path) -> None:
    """Step N is read after step N+1 is queued, except steps the loop needs at once (checkpoint
    steps 3 and 6, validation step 4, the last step 6); queuing a step reads nothing back."""
    late = _loop_result(one_rank_loops, "late")
    assert late["events"] == ["queued 1", "queued 2", "read 1", "queued 3", "read 2", "read 3",
                              "queued 4", "read 4", "queued 5", "queued 6", "read 5", "read 6"]
    assert late["device_reads"] == 0
    # skip_nonfinite_steps decides before the optimizer step: one read in every step.
    at_once = _loop_result(one_rank_loops, "at_once")
    assert at_once["events"] == [e for s in range(1, 7) for e in (f"queued {s}", f"read {s}")]
    assert at_once["device_reads"] == 6


def test_records_do_not_depend_on_when_steps_are_read(one_rank_loops: Path) -> None:
    late, at_once = _records(one_rank_loops / "late"), _records(one_rank_loops / "at_once")
    assert [r["step"] for r in late] == [1, 2, 3, 4, 5, 6]
    for key in ("step", "loss", "grad_norm", "lr", "loss_tokens", "blank_images", "patch_imbalance/vision"):
        assert [r[key] for r in late] == [r[key] for r in at_once], key
    assert [r.get("val_loss") for r in late] == [r.get("val_loss") for r in at_once]
    assert [s for s, r in enumerate(late, 1) if "checkpoint_s" in r] == [3, 6]
    assert all(r["step_time_s"] > 0 and r["tokens_per_s"] > 0 for r in late)
    assert _saved(one_rank_loops / "late") == [3, 6]


@pytest.fixture(scope="module")
def four_rank_loops(tmp_path_factory) -> tuple[Path, str]:
    """vision 2 | language 2, 6 steps, checkpoints every 3: a NaN gradient on one rank just
    before and exactly at checkpoint step 6 (stopping and skipping), and stop requests on one
    rank at an ordinary step and at a checkpoint step."""
    return _loop_runs(tmp_path_factory.mktemp("loop4"), 4, [
        {"name": "nan_before_checkpoint", "nan_at": 5},
        {"name": "nan_at_checkpoint", "nan_at": 6},
        {"name": "nan_skipped", "nan_at": 5, "argv": ["--training.skip_nonfinite_steps=true"]},
        {"name": "stop_late", "stop_at": [2, 3], "argv": ["--checkpoint.interval=100"]},
        {"name": "stop_at_checkpoint", "stop_at": [3, 0]},
    ])


def _finite_state(checkpoint: Path) -> bool:
    from titan_mimo.export import read_tensors
    tensors = read_tensors(checkpoint, "")
    assert any(k.startswith("language.model.") for k in tensors)
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


@pytest.mark.parametrize("name, nan_at", [("nan_before_checkpoint", 5), ("nan_at_checkpoint", 6)])
def test_nonfinite_step_is_never_saved(four_rank_loops, name: str, nan_at: int) -> None:
    """A NaN at step 5 (read after step 6, a checkpoint step, is queued) or at step 6 itself:
    every rank stops with NonFiniteError naming the step, and only step 3 is saved, finite."""
    runs, _ = four_rank_loops
    for rank in range(4):
        error = _loop_result(runs, name, rank)["error"]
        assert error and error.startswith(f"step {nan_at}: non-finite loss"), (rank, error)
        assert "stops without saving this step" in error
    assert _saved(runs / name) == [3]
    assert _finite_state(runs / name / "checkpoint" / "step-3")
    assert [r["step"] for r in _records(runs / name)] == list(range(1, nan_at))


def test_nonfinite_step_is_skipped(four_rank_loops) -> None:
    runs, _ = four_rank_loops
    assert _loop_result(runs, "nan_skipped")["error"] is None
    records, stopped = _records(runs / "nan_skipped"), _records(runs / "nan_before_checkpoint")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in records[:4]] == [r["loss"] for r in stopped]
    assert math.isnan(records[4]["grad_norm"]) and math.isfinite(records[5]["grad_norm"])
    assert _saved(runs / "nan_skipped") == [3, 6]
    assert _finite_state(runs / "nan_skipped" / "checkpoint" / "step-6")


@pytest.mark.parametrize("name, stopped_at", [("stop_late", 3), ("stop_at_checkpoint", 3)])
def test_stop_request_saves_and_stops_on_every_rank(four_rank_loops, name: str, stopped_at: int) -> None:
    """A stop flag set on one rank before step 2 is queued rides on step 2's reduction, read
    after step 3 is queued: every rank then reads step 3 at once, saves it and stops. Set before
    checkpoint step 3 (read at once), the run stops at step 3 too."""
    runs, output = four_rank_loops
    flagged = 3 if name == "stop_late" else 0
    for rank in range(4):
        signal_name = _loop_result(runs, name, rank)["stop_signal"]
        assert signal_name == ("SIGUSR1" if rank == flagged else "a signal on another rank"), (rank, signal_name)
    assert _saved(runs / name) == [stopped_at]
    assert [r["step"] for r in _records(runs / name)] == list(range(1, stopped_at + 1))
    seen_by_rank0 = "SIGUSR1" if flagged == 0 else "a signal on another rank"
    assert f"stopping after step {stopped_at} ({seen_by_rank0}): checkpoint step-{stopped_at} is complete" in output
