"""Multi-GPU runs: NCCL layout invariance and non-colocated vs colocated throughput.

The same script runs on CPU with gloo at debug size, so it is checked before a multi-GPU
machine is lent (`--cpu` picks the gloo debug variant):

    python benchmarks/multi_gpu.py invariance --gpus 8 --out outputs/mgpu     # on the GPU host
    python benchmarks/multi_gpu.py throughput --gpus 8 --out outputs/mgpu
    python benchmarks/multi_gpu.py invariance --gpus 4 --cpu --out /tmp/mgpu  # CPU rehearsal
    python benchmarks/multi_gpu.py throughput --gpus 4 --cpu --out /tmp/mgpu

invariance: every layout of the CPU layout-invariance matrix that fits in --gpus processes (plus
larger ones that only a machine of 6-8 GPUs holds), in fp32 and bf16, run by
tests/workers/layout_worker.py (one torchrun launch per world size) and compared with the
1-process run of the same precision: max relative loss difference per layout.

throughput: the reference's layout class, ViT-H/16 (1024^2) on k GPUs feeding the ~2B hybrid LM
on the other N-k (`train_configs/vlm_hybrid_8gpu.toml`), against all modules colocated (FSDP
over all N) at the same global batch. Per run, averaged over the steps after --warmup: step
time, tokens/s/GPU, MFU per module, fraction of the step waiting on the bridge, pipeline
bubble fraction (and its theoretical value), and with --checkpoint the time a save blocked
the loop (sync vs async). Results: a markdown table on stdout and `<out>/<mode>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests/workers/layout_worker.py"
DEBUG = "train_configs/debug_cpu.toml"
GPU_CONFIG = "train_configs/vlm_hybrid_8gpu.toml"

# name: (world size, overrides of debug_cpu.toml); the reference is the 1-process run with the
# same training.* overrides (a layout that needs another batch gets its own reference).
LAYOUTS = {
    "1|1": (2, {"modules.vision.ranks": 1, "modules.language.ranks": 1}),
    "colocated dp2": (2, {"parallelism.colocated": True}),
    "dp2|dp2": (4, {}),
    "fan_in 2|1": (3, {"modules.vision.ranks": 2, "modules.language.ranks": 1}),
    "fan_out 1|2": (3, {"modules.vision.ranks": 1, "modules.language.ranks": 2}),
    "pp2 1F1B": (4, {"modules.language.pp": 2}),
    "pp2 Interleaved1F1B": (4, {"modules.language.pp": 2, "parallelism.stages_per_rank": 2,
                                "parallelism.pipeline_schedule": "Interleaved1F1B"}),
    "tp2|tp2+SP": (4, {"modules.vision.tp": 2, "modules.language.tp": 2}),
    "2|dp2xtp2": (6, {"modules.vision.ranks": 2, "modules.language.ranks": 4, "modules.language.tp": 2}),
    "2|pp2xtp2": (6, {"modules.vision.ranks": 2, "modules.language.ranks": 4,
                        "modules.language.tp": 2, "modules.language.pp": 2}),
    "4|dp4": (8, {"modules.vision.ranks": 4, "modules.language.ranks": 4}),
    "2|pp2xdp3": (8, {"modules.vision.ranks": 2, "modules.language.ranks": 6, "modules.language.pp": 2,
                      "training.global_batch_size": 12}),
    "colocated": (4, {"parallelism.colocated": True}),
}
# bf16 with every module wrapped in FSDP2 even on one rank, so the 1-process reference and the
# layouts that give a module one rank compute with the bf16 parameters every other layout uses
# (by default such modules run unwrapped under autocast: the same loss to bf16 round-off, not
# to fp32's).
PRECISIONS = {"fp32": {}, "bf16": {"training.mixed_precision": "bf16", "parallelism.fsdp_one_rank": True}}
STEPS = 3


def torchrun(nproc: int, target: list[str], *, cpu: bool, timeout: int, log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even on a GPU host
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(29600 + nproc), *target]
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}; log: {log}")


# ---- invariance ----------------------------------------------------------------------------


def _reference(over: dict) -> dict:
    return {k: v for k, v in over.items() if k.startswith("training.")}


def _ref_name(over: dict, prec: str) -> str:
    return "ref_" + "_".join([prec, *(f"{k.split('.')[-1]}{v}" for k, v in sorted(_reference(over).items()))])


def invariance(args) -> list[dict]:
    out = args.out / "invariance"
    out.mkdir(parents=True, exist_ok=True)
    by_world: dict[int, list[dict]] = {1: []}
    for prec, p_over in PRECISIONS.items():
        refs = {_ref_name(over, prec): _reference(over) for w, over in LAYOUTS.values() if w <= args.gpus}
        for ref, r_over in refs.items():
            by_world[1].append({"name": ref, "config": DEBUG, "steps": STEPS,
                                "overrides": {"optimizer.eps": 1e-6, **p_over, **r_over}})
        for name, (world, over) in LAYOUTS.items():
            if world <= args.gpus:
                by_world.setdefault(world, []).append(
                    {"name": f"{name}_{prec}".replace(" ", "_").replace("|", "-"), "config": DEBUG,
                     "steps": STEPS, "overrides": {"optimizer.eps": 1e-6, **p_over, **over}})
    for world, cases in sorted(by_world.items()):
        spec = out / f"cases_{world}.json"
        spec.write_text(json.dumps(cases))
        t0 = time.time()
        torchrun(world, [str(WORKER), str(spec), str(out)], cpu=args.cpu, timeout=args.timeout,
                 log=out / f"world{world}.log")
        print(f"world {world}: {len(cases)} cases in {time.time() - t0:.0f} s", file=sys.stderr)
    rows = []
    for prec in PRECISIONS:
        for name, (world, over) in LAYOUTS.items():
            if world > args.gpus:
                continue
            ref = json.loads((out / _ref_name(over, prec) / "losses.json").read_text())
            got = json.loads((out / f"{name}_{prec}".replace(" ", "_").replace("|", "-") / "losses.json").read_text())
            rel = max(abs(a - b) / abs(b) for a, b in zip(got, ref, strict=True))
            rows.append({"layout": name, "world": world, "precision": prec, "max_rel_loss_diff": rel,
                         "losses": got, "reference": ref})
    print("| layout | processes | precision | max relative loss difference vs 1 process |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['world']} | {r['precision']} | {r['max_rel_loss_diff']:.2e} |")
    return rows


# ---- throughput ----------------------------------------------------------------------------


def throughput_runs(gpus: int, cpu: bool) -> dict[str, list[str]]:
    """name -> overrides of the config; vision k | language gpus - k, and colocated."""
    if cpu:
        return {
            "vision 1 | language 3 (dp3)": ["--modules.vision.ranks=1", f"--modules.language.ranks={gpus - 1}"],
            "vision 2 | language 2 (dp2)": ["--modules.vision.ranks=2", f"--modules.language.ranks={gpus - 2}"],
            "vision 1 | language pp3": ["--modules.vision.ranks=1", f"--modules.language.ranks={gpus - 1}",
                                        f"--modules.language.pp={gpus - 1}"],
            f"colocated {gpus}": ["--parallelism.colocated=true"],
        }
    runs = {}
    for k, lm_variants in ((1, [("dp", 1, 1)]), (2, [("tp2", 2, 1), ("pp2", 1, 2), ("dp", 1, 1)]),
                           (4, [("tp2", 2, 1), ("dp", 1, 1)])):
        for label, tp, pp in lm_variants:
            lm = gpus - k
            if lm < 1 or lm % (tp * pp):
                continue
            runs[f"vision {k} | language {lm} ({label})"] = [
                f"--modules.vision.ranks={k}", f"--modules.language.ranks={lm}",
                f"--modules.language.tp={tp}", f"--modules.language.pp={pp}"]
    runs[f"colocated {gpus}"] = ["--parallelism.colocated=true", "--modules.language.tp=1"]
    return runs


def summarize(records: list[dict], warmup: int, gpus: int) -> dict:
    timed = records[warmup:] or records[-1:]
    mean = lambda key: sum(r.get(key, 0.0) for r in timed) / len(timed)  # noqa: E731
    step = mean("step_time_s")
    out = {"steps_timed": len(timed), "step_time_s": step, "tokens_per_s": mean("tokens_per_s"),
           "tokens_per_s_per_gpu": mean("tokens_per_s") / gpus,
           "bridge_wait_fraction": mean("bridge_wait_s") / step if step else 0.0,
           "bubble_fraction": mean("bubble_fraction"), "bubble_fraction_theory": timed[-1].get("bubble_fraction_theory"),
           "mfu": {m: sum(r["modules"][m]["mfu"] for r in timed) / len(timed) for m in timed[-1]["modules"]},
           "memory_gib": {m: max(r["modules"][m]["memory_gib"] for r in timed) for m in timed[-1]["modules"]}}
    saves = [r["checkpoint_s"] for r in records if "checkpoint_s" in r]
    if saves:
        out["checkpoint_blocked_s"] = saves
    return out


def throughput(args) -> list[dict]:
    config = DEBUG if args.cpu else GPU_CONFIG
    common = [f"--training.steps={args.steps}", "--metrics.log_freq=1", "--metrics.enable_tensorboard=false"]
    if args.cpu:
        common += ["--training.global_batch_size=24", "--training.micro_batch_size=2"]
    variants = {"": []}
    if args.checkpoint:
        every = max(1, args.steps // 2)
        variants = {" ckpt sync": ["--checkpoint.enable=true", f"--checkpoint.interval={every}",
                                   "--checkpoint.async_mode=disabled"],
                    " ckpt async": ["--checkpoint.enable=true", f"--checkpoint.interval={every}",
                                    "--checkpoint.async_mode=async"]}
    if args.image:
        # Image side: 1024 gives ~1/4 of the LM's FLOPs per sample in the ViT, ~1664 about as many
        # (the ViT-heavy case, where a 1 | 1 split of two GPUs is balanced).
        common += [f"--data.image_sizes=[[{args.image}, {args.image}]]"]
    rows = []
    for name, over in throughput_runs(args.gpus, args.cpu).items():
        for suffix, extra in variants.items():
            run_dir = args.out / "throughput" / re.sub(r"[^A-Za-z0-9]+", "_", name + suffix).strip("_")
            run_dir.mkdir(parents=True, exist_ok=True)
            target = ["-m", "titan_mimo.train", "--config", config, f"--job.dump_folder={run_dir}",
                      *common, *over, *extra, *args.extra]
            t0 = time.time()
            try:
                torchrun(args.gpus, target, cpu=args.cpu, timeout=args.timeout, log=run_dir / "torchrun.log")
            except (SystemExit, subprocess.TimeoutExpired) as e:
                # One failed layout (out of memory, say) must not cost the others' numbers.
                print(f"{name + suffix}: failed: {e}", flush=True)
                continue
            records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            rows.append({"run": name + suffix, "wall_s": time.time() - t0,
                         **summarize(records, args.warmup, args.gpus)})
    print("| run | step s | tokens/s/GPU | MFU per module | bridge wait | bubble (theory) | memory GiB | checkpoint s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = ", ".join(f"{m} {100 * v:.1f}%" for m, v in r["mfu"].items())
        mem = ", ".join(f"{m} {v:.1f}" for m, v in r["memory_gib"].items())
        theory = r["bubble_fraction_theory"]
        ck = ", ".join(f"{s:.2f}" for s in r.get("checkpoint_blocked_s", [])) or "-"
        print(f"| {r['run']} | {r['step_time_s']:.3f} | {r['tokens_per_s_per_gpu']:.0f} | {mfu} | "
              f"{100 * r['bridge_wait_fraction']:.1f}% | {100 * r['bubble_fraction']:.1f}% "
              f"({100 * theory:.1f}%) | {mem} | {ck} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["invariance", "throughput"])
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count() or 4,
                        help="processes (one per GPU; CPU processes with --cpu)")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPU at debug size")
    parser.add_argument("--out", type=Path, default=Path("outputs/multi_gpu"))
    parser.add_argument("--steps", type=int, default=12, help="throughput: steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="throughput: steps left out of the means")
    parser.add_argument("--checkpoint", action="store_true", help="throughput: also time sync vs async saves")
    parser.add_argument("--image", type=int, default=0,
                        help="throughput: square image side instead of the config's (e.g. 1664: ViT-heavy)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per torchrun launch")
    # Overrides for the trainer follow `--` (argparse cannot take them as a positional list after
    # options), e.g. `throughput --gpus 2 -- --training.global_batch_size=8`.
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: pass --cpu for the gloo rehearsal at debug size")
    if not args.cpu and torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"--gpus {args.gpus} but only {torch.cuda.device_count()} GPUs are visible")
    rows = invariance(args) if args.mode == "invariance" else throughput(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.mode}.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "gpus": args.gpus, "cpu": args.cpu, "torch": torch.__version__,
         "device": "cpu" if args.cpu else torch.cuda.get_device_name(0), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
