"""Checkpoints (DESIGN.md invariant 2, resume invariance): a resumed run continues bit for bit;
resuming onto another placement reshards; incomplete or damaged checkpoints are never used;
preemption saves and stops; weights round-trip through safetensors.

The runs that need only one process group are batched into one torchrun launch per world size
(tests/workers/checkpoint_worker.py); crash and signal tests launch `titan_mimo.train` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from launcher import REPO, start, torchrun
from titan_mimo.checkpoint import MARKER, ResumePoint, find_resume, problem_with
from titan_mimo.config_loader import load_config
from titan_mimo.export import export_checkpoint, load_weights, read_full_weights, read_index, read_tensors
from titan_mimo.models import build_model
from titan_mimo.train import stop_on_signals

CONFIG = "train_configs/debug_cpu.toml"
TWO_ENCODERS = "train_configs/debug_two_encoders_cpu.toml"
STEPS, SAVE_AT = 6, 3
COMMON = [f"--training.steps={STEPS}", "--metrics.log_freq=1", "--metrics.enable_tensorboard=false",
          "--checkpoint.enable=true", f"--checkpoint.interval={SAVE_AT}"]
LAYOUTS = {
    "dp2": [],  # vision 2 | language 2, the debug config's own layout
    "pp": ["--modules.vision.ranks=1", "--modules.language.ranks=2", "--modules.language.pp=2"],
    "fan_in": ["--modules.vision.ranks=2", "--modules.language.ranks=1"],
    "one": ["--parallelism.colocated=true"],
    # Two pipeline stages per rank: two parts, two optimizers per rank.
    "interleaved": ["--modules.language.pp=2", "--parallelism.stages_per_rank=2",
                    "--parallelism.pipeline_schedule=Interleaved1F1B"],
    "frozen": ["--modules.vision.frozen=true"],  # no optimizer state for vision
    "two_encoders": ["--config", str(REPO / TWO_ENCODERS)],
    # The MoE language model, its experts over the 2 language ranks; the same without expert
    # parallelism, and on one rank.
    "moe_ep2": ["--modules.language.model=hybrid_lm/debug_moe", "--modules.language.ep=2"],
    "moe_ep1": ["--modules.language.model=hybrid_lm/debug_moe"],
    "moe_one": ["--modules.language.model=hybrid_lm/debug_moe", "--parallelism.colocated=true"],
}


def _argv(out: Path, layout: str, *extra: str) -> list[str]:
    return ["--config", str(REPO / CONFIG), f"--job.dump_folder={out}", *COMMON, *LAYOUTS[layout], *extra]


def _case(out: Path, layout: str, *extra: str, copy: tuple[Path, Path] | None = None,
          export: tuple[Path, Path] | None = None) -> dict:
    return {"argv": _argv(out, layout, *extra), "copy": [str(p) for p in copy] if copy else None,
            "export": [str(p) for p in export] if export else None}


def _step3(run: Path) -> Path:
    return run / "checkpoint" / f"step-{SAVE_AT}"


def _launch(nproc: int, cases: list[dict], tmp: Path) -> None:
    spec = tmp / f"cases_{nproc}.json"
    spec.write_text(json.dumps(cases))
    torchrun(nproc, REPO / "tests/workers/checkpoint_worker.py", str(spec), timeout=600)


def _records(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _losses(out: Path) -> dict[int, float]:
    return {s: r["loss"] for s, r in _records(out).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Straight 6-step runs saving at step 3 and 6, and resumes from their step-3 copies."""
    t = tmp_path_factory.mktemp("ckpt")
    export = t / "export_dp2_step3"

    def resumed(name: str, source: str, layout: str, *extra: str) -> dict:
        return _case(t / name, layout, *extra, copy=(_step3(t / source), _step3(t / name)))

    _launch(4, [
        _case(t / "dp2", "dp2"),
        _case(t / "init_dp2", "dp2", "--training.steps=2", "--checkpoint.enable=false",
              f"--checkpoint.initial_load_path={export}", export=(_step3(t / "dp2"), export)),
        *[case for layout in ("interleaved", "frozen", "two_encoders", "moe_ep2")
          for case in (_case(t / layout, layout), resumed(f"{layout}_resumed", layout, layout))],
        resumed("moe_ep2_to_moe_ep1", "moe_ep2", "moe_ep1"),
    ], t)
    _launch(3, [
        _case(t / "pp", "pp", "--checkpoint.async_mode=async"),
        resumed("pp_resumed", "pp", "pp"),
        _case(t / "fan_in", "fan_in"),
        resumed("fan_in_resumed", "fan_in", "fan_in"),
        resumed("dp2_to_pp", "dp2", "pp"),
    ], t)
    _launch(1, [
        resumed("dp2_to_one", "dp2", "one"),
        resumed("moe_ep2_to_moe_one", "moe_ep2", "moe_one"),
        _case(t / "init_one", "one", "--training.steps=2", "--checkpoint.enable=false",
              f"--checkpoint.initial_load_path={export}"),
    ], t)
    return t


def _state(run: Path, step: int) -> dict[str, torch.Tensor]:
    return read_tensors(run / "checkpoint" / f"step-{step}", "")


@pytest.mark.parametrize("layout", ["pp", "fan_in", "interleaved", "frozen", "two_encoders", "moe_ep2"])
def test_resume_is_bitwise_identical(runs: Path, layout: str) -> None:
    """3 steps, stop, resume to 6 == 6 straight: losses, weights and AdamW states bit for bit
    (the pp layout saves asynchronously, so this also checks that an async save is a snapshot)."""
    straight, resumed = _losses(runs / layout), _losses(runs / f"{layout}_resumed")
    assert sorted(resumed) == [4, 5, 6]
    assert [resumed[s] for s in (4, 5, 6)] == [straight[s] for s in (4, 5, 6)]
    a, b = _state(runs / layout, STEPS), _state(runs / f"{layout}_resumed", STEPS)
    assert sorted(a) == sorted(b)
    assert any(k.startswith("language.optimizer.state.") and k.endswith("exp_avg_sq") for k in a)
    assert any(k.startswith("vision.optimizer.state.") for k in a) == (layout != "frozen")
    assert any(k.startswith("vision_small.model.") for k in a) == (layout == "two_encoders")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("source, target", [("dp2", "pp"), ("dp2", "one"), ("moe_ep2", "moe_ep1"),
                                            ("moe_ep2", "moe_one")])
def test_resume_onto_another_placement(runs: Path, source: str, target: str) -> None:
    """Saved under vision 2 | language 2; resumed as vision 1 | language pp 2, and as one rank.
    The MoE model saved with its experts over 2 ranks (ep 2), resumed without expert parallelism
    on the same ranks and on one rank."""
    straight, resumed = _losses(runs / source), _losses(runs / f"{source}_to_{target}")
    assert sorted(resumed) == [4, 5, 6]
    for s in (4, 5, 6):
        assert abs(resumed[s] - straight[s]) <= 1e-6 * max(1.0, abs(straight[s])), (s, resumed, straight)
    a, b = _state(runs / source, STEPS), _state(runs / f"{source}_to_{target}", STEPS)
    weights = [k for k in a if ".model." in k]
    assert weights and set(weights) <= set(b)
    for key in weights:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_checkpoint_holds_experts_and_correction_biases(runs: Path) -> None:
    """The routed experts whole ([experts, out, in], however they were split) and every MoE
    layer's correction bias, moved away from zero by the updates of the saved steps."""
    state = _state(runs / "moe_ep2", SAVE_AT)
    for layer in (1, 3, 5):
        prefix = f"language.model.layers.{layer}.moe."
        assert state[prefix + "experts.up_proj"].shape == (8, 32, 64)
        assert state[prefix + "experts.down_proj"].shape == (8, 64, 32)
        bias = state[prefix + "gate.e_score_correction_bias"]
        assert bias.shape == (8,) and bias.abs().max() > 0
    assert not [k for k in state if "tokens_per_expert" in k or "aux_loss_scale" in k]


def test_checkpoint_contents(runs: Path) -> None:
    step3 = _step3(runs / "dp2")
    records = _records(runs / "dp2")
    assert [s for s, r in records.items() if "checkpoint_s" in r] == [3, 6]
    assert all(r["checkpoint_s"] > 0 for r in records.values() if "checkpoint_s" in r)
    marker = json.loads((step3 / MARKER).read_text())
    assert marker["step"] == SAVE_AT and marker["world_size"] == 4
    assert set(marker["files"]) == {".metadata", *(f"__{r}_0.distcp" for r in range(4))}
    keys = set(torch.distributed.checkpoint.FileSystemReader(str(step3)).read_metadata().state_dict_metadata)
    assert {"train.step", "train.tokens_seen", "rank0", "rank3"} <= keys
    for module in ("vision", "language"):
        assert any(k.startswith(f"{module}.model.") for k in keys)
        assert any(k.startswith(f"{module}.optimizer.state.") for k in keys)
        assert any(k.startswith(f"{module}.lr_scheduler.") for k in keys)
    # Every key is under a module's name or one of the run-wide namespaces.
    assert {k.split(".")[0] for k in keys} == {"vision", "language", "train", "rank0", "rank1", "rank2", "rank3"}


def test_initial_load_path_reshards(runs: Path) -> None:
    """The same exported weights loaded into two placements give the same first losses, and
    not the losses of a run from scratch."""
    sharded, one, scratch = _losses(runs / "init_dp2"), _losses(runs / "init_one"), _losses(runs / "dp2")
    assert abs(sharded[1] - one[1]) <= 1e-5 * abs(one[1])
    assert abs(sharded[1] - scratch[1]) > 1e-3


def _lm_logits(weights_into, tokens: torch.Tensor) -> torch.Tensor:
    model = build_model("hybrid_lm/debug")
    weights_into(model)
    with torch.no_grad():
        return model(tokens)


def test_export_round_trip_gives_identical_logits(runs: Path, tmp_path: Path) -> None:
    ckpt = runs / "dp2" / "checkpoint" / f"step-{STEPS}"
    renamed = {"language": {"tok_embeddings.weight": "model.embed_tokens.weight"}}
    index = export_checkpoint(ckpt, tmp_path / "fp32", "float32", renamed)
    assert index["modules"]["language"]["names"]["tok_embeddings.weight"] == "model.embed_tokens.weight"
    assert read_index(tmp_path / "fp32", {"vision": "vit/debug", "language": "hybrid_lm/debug"}) == index
    tokens = torch.randint(2, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    reference = _lm_logits(lambda m: m.load_state_dict(read_full_weights(ckpt, "language")), tokens)
    exported = _lm_logits(lambda m: load_weights([m], tmp_path / "fp32", "language", index), tokens)
    assert torch.equal(exported, reference)
    # bf16 export: half the bytes, logits close but not equal.
    export_checkpoint(ckpt, tmp_path / "bf16", "bfloat16")
    bf16 = read_index(tmp_path / "bf16", {"language": "hybrid_lm/debug"})
    assert (tmp_path / "bf16/language.safetensors").stat().st_size < 0.6 * (tmp_path / "fp32/language.safetensors").stat().st_size
    lowp = _lm_logits(lambda m: load_weights([m], tmp_path / "bf16", "language", bf16), tokens)
    torch.testing.assert_close(lowp, reference, rtol=0.05, atol=0.05)


def test_export_and_initial_load_errors(runs: Path, tmp_path: Path) -> None:
    ckpt = runs / "dp2" / "checkpoint" / f"step-{STEPS}"
    broken = tmp_path / "step-9"
    shutil.copytree(ckpt, broken)
    (broken / MARKER).unlink()
    with pytest.raises(ValueError, match="COMPLETE.json is missing"):
        export_checkpoint(broken, tmp_path / "out")
    index = export_checkpoint(ckpt, tmp_path / "ok")
    with pytest.raises(ValueError, match="no weights for modules \\['audio'\\]"):
        read_index(tmp_path / "ok", {"language": "hybrid_lm/debug", "audio": "vit/debug"})
    with pytest.raises(ValueError, match="exported from model 'vit/debug' but is configured as 'vit/debug_small'"):
        read_index(tmp_path / "ok", {"vision": "vit/debug_small"})
    with pytest.raises(ValueError, match="export.json does not exist"):
        read_index(tmp_path, {"vision": "vit/debug"})
    with pytest.raises(ValueError, match="has shape"):
        load_weights([build_model("hybrid_lm/debug", dim=32)], tmp_path / "ok", "language", index)


# ---- which checkpoint to resume from (file system only) ------------------------------------


def _fake_checkpoint(folder: Path, step: int, *, complete: bool = True) -> Path:
    path = folder / f"step-{step}"
    path.mkdir(parents=True)
    files = {".metadata": 10, "__0_0.distcp": 100}
    for name, size in files.items():
        (path / name).write_bytes(b"x" * size)
    if complete:
        (path / MARKER).write_text(json.dumps({"step": step, "files": files}))
    return path


def _cfg(tmp: Path, *extra: str):
    return load_config(["--config", str(REPO / CONFIG), f"--job.dump_folder={tmp}", "--checkpoint.enable=true",
                        *extra])


def test_resume_picks_newest_complete_checkpoint(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "checkpoint"
    assert find_resume(_cfg(tmp_path), verbose=True) is None  # nothing saved yet
    _fake_checkpoint(folder, 2)
    _fake_checkpoint(folder, 4)
    _fake_checkpoint(folder, 10)
    (folder / "step-10" / "__0_0.distcp").write_bytes(b"x" * 7)   # truncated after the save
    _fake_checkpoint(folder, 12, complete=False)                   # killed while saving
    (folder / "step-x").mkdir()                                    # not a checkpoint name
    point = find_resume(_cfg(tmp_path), verbose=True)
    assert isinstance(point, ResumePoint) and point.step == 4 and point.path == folder / "step-4"
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step-12/COMPLETE.json is missing" in err
    assert "step-10/__0_0.distcp has 7 bytes where 100 were written" in err
    assert find_resume(_cfg(tmp_path, "--checkpoint.load_step=2"), verbose=False).step == 2
    with pytest.raises(ValueError, match="load_step = 10: .*__0_0.distcp has 7 bytes"):
        find_resume(_cfg(tmp_path, "--checkpoint.load_step=10"), verbose=False)
    with pytest.raises(ValueError, match="load_step = 12: .*COMPLETE.json is missing"):
        find_resume(_cfg(tmp_path, "--checkpoint.load_step=12"), verbose=False)
    with pytest.raises(ValueError, match=r"load_step = 7: .*step-7 does not exist \(steps present: \[12, 10, 4, 2\]\)"):
        find_resume(_cfg(tmp_path, "--checkpoint.load_step=7"), verbose=False)
    (folder / "step-4" / ".metadata").unlink()
    assert problem_with(folder / "step-4").endswith("step-4/.metadata is missing")
    assert find_resume(_cfg(tmp_path), verbose=False).step == 2
    assert find_resume(_cfg(tmp_path, "--checkpoint.enable=false"), verbose=False) is None


@pytest.mark.parametrize("override, message", [
    ("--checkpoint.load_step=0", "load_step = 0: use -1"),
    ("--checkpoint.keep_latest_k=-1", "keep_latest_k = -1 must be >= 0"),
    ("--checkpoint.interval=0", "interval = 0 must be >= 1"),
    ("--checkpoint.async_mode=sometimes", "async_mode"),
])
def test_checkpoint_config_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cfg(tmp_path, override)
    with pytest.raises(ValueError, match="export_at_end = true needs enable = true"):
        load_config(["--config", str(REPO / CONFIG), "--checkpoint.export_at_end=true"])


# ---- real processes: a crash while saving, preemption --------------------------------------


def _run(nproc: int, out: Path, *extra: str, script: str | None = None, script_args: tuple = ()) -> subprocess.Popen:
    target = [str(REPO / script), *script_args] if script else ["-m", "titan_mimo.train"]
    return start(nproc, *target, *_argv(out, "dp2", *extra))


def _wait_for_first_step(proc: subprocess.Popen, metrics: Path) -> None:
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, "run ended before its first step"
        time.sleep(0.05)


def test_killed_during_save_resumes_from_previous_complete(runs: Path, tmp_path: Path) -> None:
    """Rank 1 dies while writing step-4: step-4 never becomes complete; re-running resumes from
    step-2 and trains on exactly as the straight run did. keep_latest_k = 2 then deletes the
    older complete checkpoints but not an incomplete one."""
    proc = _run(4, tmp_path, "--checkpoint.interval=2", script="tests/workers/crash_during_save.py",
                script_args=("4",))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out[-3000:]
    folder = tmp_path / "checkpoint"
    assert problem_with(folder / "step-2") is None
    assert "COMPLETE.json is missing" in problem_with(folder / "step-4")
    _fake_checkpoint(folder, 1, complete=False)  # an older incomplete leftover must survive purges

    proc = _run(4, tmp_path, "--checkpoint.interval=1", "--checkpoint.keep_latest_k=2",
                "--checkpoint.export_at_end=true")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-5000:]
    assert "skipping checkpoint" in out and "step-4/COMPLETE.json is missing" in out
    assert f"resumed from {folder / 'step-2'} (step 2)" in out
    assert sorted(p.name for p in folder.iterdir()) == ["export-step-6", "step-1", "step-5", "step-6"]
    index = read_index(folder / "export-step-6", {"vision": "vit/debug", "language": "hybrid_lm/debug"})
    assert index["step"] == 6 and index["dtype"] == "float32"
    assert problem_with(folder / "step-6") is None and problem_with(folder / "step-1") is not None
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    resumed = {r["step"]: r["loss"] for r in records[-4:]}
    straight = _losses(runs / "dp2")
    assert sorted(resumed) == [3, 4, 5, 6]
    assert all(resumed[s] == straight[s] for s in resumed), (resumed, straight)


def test_sigterm_saves_at_step_boundary_and_resume_finishes(runs: Path, tmp_path: Path) -> None:
    proc = _run(4, tmp_path, "--checkpoint.interval=100")
    metrics = tmp_path / "metrics.jsonl"
    _wait_for_first_step(proc, metrics)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to every worker
    out, _ = proc.communicate(timeout=120)
    saved = [p for p in (tmp_path / "checkpoint").iterdir()]
    assert len(saved) == 1, (saved, out[-3000:])
    stopped_at = int(saved[0].name.removeprefix("step-"))
    assert 1 <= stopped_at < STEPS and problem_with(saved[0]) is None, out[-3000:]
    assert f"stopping after step {stopped_at} (SIGTERM)" in out
    assert proc.returncode != 0  # torchrun itself reports the signal it got

    proc = _run(4, tmp_path, "--checkpoint.interval=100")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-5000:]
    assert f"resumed from {saved[0]} (step {stopped_at})" in out
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    resumed = {r["step"]: r["loss"] for r in records[-(STEPS - stopped_at):]}
    straight = _losses(runs / "dp2")
    assert sorted(resumed) == list(range(stopped_at + 1, STEPS + 1))
    assert all(resumed[s] == straight[s] for s in resumed), (resumed, straight)


def test_stop_signals_only_set_a_flag() -> None:
    class Trainer:
        stop_signal = ""

    trainer = Trainer()
    before = signal.getsignal(signal.SIGUSR1)
    with stop_on_signals(trainer):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert trainer.stop_signal == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert trainer.stop_signal == "SIGTERM"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_sigusr1_to_the_workers_saves_and_exits_75(tmp_path: Path) -> None:
    """SLURM-style preemption signals the training processes themselves: they agree on a step,
    save it, and each exits with PREEMPTED_EXIT_CODE, which torchrun reports."""
    proc = _run(4, tmp_path, "--checkpoint.interval=100", "--training.steps=1000")
    metrics = tmp_path / "metrics.jsonl"
    _wait_for_first_step(proc, metrics)
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()  # torchrun's workers
    assert len(workers) == 4, workers
    for pid in workers:
        os.kill(int(pid), signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    saved = list((tmp_path / "checkpoint").iterdir())
    assert len(saved) == 1 and problem_with(saved[0]) is None, out[-3000:]
    assert "(SIGUSR1): checkpoint step-" in out and "is complete; re-run the same command to resume" in out
    assert "exitcode  : 75" in out, out[-3000:]
