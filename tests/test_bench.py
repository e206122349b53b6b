"""titan_mimo.bench on CPU at debug size: the titan_mimo run is the trainer on the config, the bare
loop trains the same step, an encoder runs alone, and the numbers reported are the records'."""

import json
import math

import pytest
import torch

from titan_mimo import bench

DEBUG = ["--config", "train_configs/debug_cpu.toml", "--metrics.enable_tensorboard=false"]


def test_the_bench_runs_the_trainer_and_the_bare_loop_computes_its_step(tmp_path):
    out = bench.run(DEBUG + [f"--job.dump_folder={tmp_path}", "--warmup", "0", "--steps", "1",
                             "--json", str(tmp_path / "bench.json")])
    ours, bare = out["titan_mimo"], out["bare"]
    # The trainer ran the config (a colocated world of one) and logged its one step.
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1 and ours.loss == record["loss"] and ours.step_s == record["step_time_s"]
    # Same initial weights, same first step's samples, fp32: the bare loop's first loss is the trainer's.
    assert math.isclose(bare.loss, ours.loss, rel_tol=1e-6), (bare.loss, ours.loss)
    for r in (ours, bare):
        assert math.isclose(r.tokens_per_s * r.step_s, 8 * 32, rel_tol=1e-9)  # global batch x seq_len
        assert r.mfu is None and r.tflops > 0  # no peak is known for a CPU
    assert set(ours.modules) == {"vision", "language"}
    assert math.isclose(sum(m["tflops"] for m in ours.modules.values()), ours.tflops, rel_tol=1e-9)
    # The bare loop does the trainer's work: its FLOPs per step are the trainer's.
    assert math.isclose(bare.tflops * bare.step_s, ours.tflops * ours.step_s, rel_tol=1e-9)
    assert bare.host_s > 0 and ours.host_s == record["host_issue_s"] > 0  # the trainer's own count
    assert math.isclose(out["overhead"], ours.step_s / bare.step_s - 1)
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["titan_mimo"]["loss"] == ours.loss and written["overhead"] == out["overhead"]


def test_an_encoder_alone(tmp_path):
    out = bench.run(DEBUG + [f"--job.dump_folder={tmp_path}", "--encoder", "vision", "--warmup", "1",
                             "--steps", "2"])
    ours = out["titan_mimo"]
    assert out["bare"] is None and out["overhead"] is None
    assert math.isclose(ours.images_per_s * ours.step_s, 8, rel_tol=1e-9)  # one image per sample
    assert ours.tokens_per_s == 0 and ours.tflops > 0 and list(ours.modules) == ["vision"]
    with pytest.raises(ValueError, match="not an encoder of the config; encoders: vision"):
        bench.run(DEBUG + [f"--job.dump_folder={tmp_path}", "--encoder", "language"])


def test_bench_options_and_config_arguments_are_told_apart():
    args, config_argv = bench.parse_args(["--config", "x.toml", "--steps", "5", "--modules.language.pp=2",
                                          "--warmup", "2", "--no-bare"])
    assert (args.steps, args.warmup, args.no_bare) == (5, 2, True)
    assert config_argv == ["--config", "x.toml", "--modules.language.pp=2", "--training.steps=7",
                           "--metrics.log_freq=1"]
    for set_by_bench in ("--training.steps=3", "--metrics.log_freq=2"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--config", "x.toml", set_by_bench])
    with pytest.raises(SystemExit):
        bench.parse_args(["--config", "x.toml", "--steps", "0"])
    # No abbreviations of the bench's options: anything else is the config's.
    assert bench.parse_args(["--config", "x.toml", "--step", "1"])[1][:4] == ["--config", "x.toml", "--step", "1"]


def test_timed_steps_and_flops_come_from_the_trainers_records():
    from types import SimpleNamespace
    placements = {"vision": SimpleNamespace(size=1), "language": SimpleNamespace(size=1)}

    def record(step, time_s, vision_tflops, lm_tflops):
        return {"step": step, "step_time_s": time_s, "host_issue_s": time_s / 2, "loss": float(step),
                "modules": {"vision": {"tflops_per_device": vision_tflops, "memory_gib": 1.0 + step},
                            "language": {"tflops_per_device": lm_tflops, "memory_gib": 1.0}}}
    records = [record(1, 9.0, 1.0, 1.0), record(2, 2.0, 1.0, 3.0), record(3, 5.0, 2.0, 2.0),
               record(4, 4.0, 1.0, 1.0)]
    # Step 1 is warm-up, step 3 was profiled.
    assert [r["step"] for r in bench.timed_records(records, 1, 3)] == [2, 4]
    assert bench.flops_per_step(records[1], placements) == {"vision": 2e12, "language": 6e12}
    setup = SimpleNamespace(cfg=SimpleNamespace(modules={"vision": None, "language": None},
                                                metrics=SimpleNamespace(profile_step=3, peak_tflops=0.0),
                                                training=SimpleNamespace(global_batch_size=2, seq_len=5)),
                            placements=placements)
    result, flops = bench.trainer_result(setup, torch.device("cpu"), records, warmup=1)
    # Steps 2 and 4: 2 s and 4 s; 8 and 8 TFLOP each.
    assert (result.step_s, result.step_s_median, result.host_s, flops) == (3.0, 3.0, 1.5, 8e12)
    assert math.isclose(result.tflops, 8 / 3) and result.tokens_per_s == 10 / 3 and result.loss == 4.0
    assert math.isclose(result.modules["vision"]["tflops"], (2 + 4) / 2 / 3)
    assert result.modules["vision"]["mfu"] is None and result.peak_mem_gib == 5.0


def test_the_loop_times_steps_after_its_warmup():
    calls = []

    def one_step():
        calls.append(len(calls))
        return torch.tensor(float(len(calls)))
    times = bench.time_loop(one_step, torch.device("cpu"), warmup=2, steps=3, gc_freq=50)
    assert len(calls) == 5 and len(times.step_s) == 3 and all(t > 0 for t in times.step_s)
    assert times.loss == 5.0 and times.host_s > 0


def _benchmarks_run():
    import importlib
    import sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("benchmarks.run")


@pytest.mark.parametrize("tiny", [False, True])
def test_every_bench_row_of_the_headline_table_is_a_valid_config(tiny):
    """What the one benchmark command runs on the GPU host is checked here: each titan_mimo.bench
    row's config and overrides load, place on one GPU and pass the bench's own checks."""
    from titan_mimo.train import prepare
    run = _benchmarks_run()
    rows = {r.name for r in run.ROWS}
    assert {"attn_1b", "vit_h16", "hybrid_2b", "vlm_1gpu", "mamba2_layer"} <= rows
    for command in run.command_ids(run.ROWS):
        if command.is_bench:
            args, config_argv = bench.parse_args(run.argv_of(command, tiny)[3:])
            setup = prepare(config_argv)
            assert args.encoder is None or args.encoder in setup.cfg.encoders


def test_the_headline_command_writes_json_and_a_table(tmp_path):
    """One row at debug size: its bench runs once (its bare loop is the row's peer), and the
    table's ratio is the row's TFLOP/s ratio."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--rows", "vlm_1gpu",
                           "--out", str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["results.json", "vlm_1gpu.json"]
    row = json.loads((tmp_path / "results.json").read_text())["rows"]["vlm_1gpu"]
    bench_out = json.loads((tmp_path / "vlm_1gpu.json").read_text())
    assert row["titan_mimo"] == bench_out["titan_mimo"] and row["peer"] == bench_out["bare"]
    assert math.isclose(row["ratio"], row["titan_mimo"]["tflops"] / row["peer"]["tflops"])
    table = (tmp_path / "table.md").read_text()
    assert "| vlm_1gpu |" in table and f"{row['ratio']:.2f}×" in table and "--rows vlm_1gpu" in table


def test_a_later_run_of_some_rows_adds_them_to_the_earlier_table(tmp_path):
    """`--rows` into the same folder on the same machine keeps the rows it did not rerun (one table
    from several commands); an earlier run on another GPU is replaced, not mixed in."""
    run = _benchmarks_run()
    env = {"date": "2026-12-03", "gpu": "H200", "torch": "2.11", "commit": "a"}
    cell = {"tflops": 400.0, "step_s": 0.1, "peak_mem_gib": 10.0, "mfu": 0.4, "tokens_per_s": 1e4}
    earlier = {"attn_1b": {"titan_mimo": cell, "peer": cell, "ratio": 1.0, "run": "first"},
               "hybrid_2b": {"titan_mimo": cell, "peer": None, "ratio": None, "run": "first"}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"environment": env, "rows": earlier}))
    now = {"hybrid_2b": {"titan_mimo": {**cell, "mfu": 0.5}, "peer": None, "ratio": None, "run": "second"}}
    results, rows = run.merged(path, now, {**env, "date": "2026-12-04", "commit": "b"})
    assert [r.name for r in rows] == ["attn_1b", "hybrid_2b"]
    assert results["attn_1b"]["run"] == "first" and results["hybrid_2b"]["titan_mimo"]["mfu"] == 0.5
    text = run.table(rows, results, env, "second")
    assert "    first\n    second\n" in text and "**50.0%**" in text
    results, rows = run.merged(path, now, {**env, "gpu": "H100"})
    assert [r.name for r in rows] == ["hybrid_2b"]


def test_a_sweep_runs_the_bench_once_per_combination_and_tabulates_them(tmp_path):
    """Two values of a key pair (micro and global batch together) times two of another: four
    bench processes; a value the config rejects is a failed row, the others still run."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.sweep", "--config", "train_configs/debug_cpu.toml", "--out", str(tmp_path),
         "--grid", "training.micro_batch_size,training.global_batch_size=4,8",
         "--grid", "training.seq_len=16,-1", "--", "--warmup", "0", "--steps", "1",
         "--metrics.enable_tensorboard=false"],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]  # the seq_len = -1 rows failed
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [r["overrides"] for r in rows] == [
        ["--training.micro_batch_size=4", "--training.global_batch_size=4", "--training.seq_len=16"],
        ["--training.micro_batch_size=4", "--training.global_batch_size=4", "--training.seq_len=-1"],
        ["--training.micro_batch_size=8", "--training.global_batch_size=8", "--training.seq_len=16"],
        ["--training.micro_batch_size=8", "--training.global_batch_size=8", "--training.seq_len=-1"]]
    ok = [r["result"] for r in rows[::2]]
    assert all(math.isclose(r["tokens_per_s"] * r["step_s"], b * 16) for r, b in zip(ok, (4, 8)))
    assert all("error" in r["result"] for r in rows[1::2])
    table = (tmp_path / "table.md").read_text()
    assert table.count("| --training.micro_batch_size=") == 4 and table.count("failed: exit") == 2


@pytest.mark.parametrize("program", sorted(p.stem for p in (__import__("pathlib").Path(__file__).resolve().parents[1]
                                                           / "benchmarks").glob("*.py") if p.stem != "__init__"))
def test_every_benchmark_program_imports_on_cpu(program):
    """The GPU programs run as `python -m benchmarks.NAME` from the repository root: each imports
    (its GPU-only packages inside functions), so a renamed helper fails here, not on a GPU host."""
    _benchmarks_run()  # the repository root on sys.path
    import importlib
    importlib.import_module(f"benchmarks.{program}")
