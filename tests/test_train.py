"""End-to-end runs of `titan_mimo.train` as users launch it: the mock task is learnable only
through the vision path, outputs follow the contract, and a dead rank stops the whole job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path


from launcher import start

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


def test_outputs_follow_the_contract(tmp_path: Path) -> None:
    # Logging every 5 steps, validating every 2: a validation step is logged too (with its
    # val_loss), as is the last step.
    proc = _launch(4, tmp_path, "--training.steps=3", "--metrics.log_freq=5", "--validation.enable=true",
                   "--validation.freq=2", "--validation.steps=1")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-5000:]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]
    assert records[0]["val_loss"] > 0 and "val_loss" not in records[1]
    for r in records:
        for key in ("loss", "grad_norm", "lr", "tokens_per_s", "step_time_s", "bridge_wait_s"):
            assert r[key] >= 0
        assert set(r["modules"]) == {"vision", "language"}
        for m in r["modules"].values():
            assert m["memory_gib"] > 0 and m["tflops_per_device"] > 0
    assert (tmp_path / "config.toml").read_text().count("[modules.vision]") == 1
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_bad_config_fails_before_distributed_work(tmp_path: Path) -> None:
    proc = _launch(1, tmp_path, "--training.micro_batch_size=3")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "global_batch_size = 8 is not a multiple of micro_batch_size = 3" in output
    assert not (tmp_path / "metrics.jsonl").exists()


def test_killing_one_rank_ends_the_job(tmp_path: Path) -> None:
    """A rank that dies mid-run makes every rank exit, non-zero, well within 60 s."""
    proc = _launch(4, tmp_path, "--training.steps=100000", "--metrics.log_freq=1")
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


def test_garbage_collection_is_periodic_during_training_and_restored_after(monkeypatch):
    import gc

    from titan_mimo.train import garbage_collection
    collections = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda generation=2: collections.append(generation) or real_collect(generation))
    assert gc.isenabled()
    with garbage_collection(3) as collector:
        assert not gc.isenabled()
        start = len(collections)  # the initial collection
        for step in range(1, 10):
            collector.run(step)
        assert collections[start:] == [1, 1, 1, 1]  # after the first step; steps 3, 6, 9
    assert gc.isenabled()
    with garbage_collection(0) as collector:
        assert collector is None and gc.isenabled()


def test_garbage_collection_frees_the_first_steps_cycles():
    """What the first step's compilation leaves behind (reference cycles holding tensors) is
    freed right after that step, not gc_freq steps later."""
    import weakref

    import torch

    from titan_mimo.train import garbage_collection

    class Node:
        pass

    with garbage_collection(50) as collector:
        node = Node()
        node.self, node.tensor = node, torch.zeros(4)
        tensor = weakref.ref(node.tensor)
        del node
        assert tensor() is not None  # held by the cycle: automatic collection is off
        collector.run(7)  # the first step of a resumed run
        assert tensor() is None
