"""Does FP8 training converge like bf16? The same training twice, without and with float8 linears
in some modules (`modules.<name>.float8`, `float8_filter`), same seed and data, and their losses
side by side.

    python -m benchmarks.code_corpus --out /tmp/corpus       # real text without internet
    python -m benchmarks.float8_convergence --config train_configs/attn_1b_1gpu.toml \\
        --module language --recipe tensorwise --filter all --steps 300 --out /tmp/conv --parallel \\
        -- --data.dataset=local '--data.sources=["/tmp/corpus/train.jsonl"]' \\
        --data.tokenizer=/tmp/corpus/tokenizer.json --data.pack=true --data.pack_max_records=16
    python -m benchmarks.float8_convergence --config train_configs/vlm_hybrid_1gpu.toml \\
        --module vision --recipe tensorwise --filter all --steps 300 --out /tmp/conv_vlm   # mock data

Each run is `python -m titan_mimo.train --config X` with `--training.steps`, checkpointing off, a
record every step, its own dump folder (--out/bf16, --out/fp8) and log (--out/bf16.log, ...), and
the arguments after `--` (the same for both). The "bf16" run is the config with float8 = none (its
own mixed precision: bf16 in the GPU configs); the "fp8" run adds `--modules.<module>.float8=
<recipe> --modules.<module>.float8_filter=<filter>` for each --module (comma-separated names).
`--parallel` starts both at once (one H200 holds two attn_1b runs, 38 GiB each, but not two of
vlm_hybrid_1gpu, 69 GiB: the point is the losses, not the speed), otherwise one after the other;
`--timeout` bounds each run.

Then from each run's metrics.jsonl: the loss at steps 1, --every, 2 x --every, ..., the last
(and the validation loss wherever the runs logged one), the mean loss over the last --tail steps
of each and the fp8 run's difference from bf16 in % of bf16's, written to --out/convergence.json
and --out/table.md and printed. Exit code 1 if a run failed (the end of its log is printed), a
loss is not finite, or the difference exceeds --max-difference (when given).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.run import environment, log_tail, run_logged, split_passthrough

RUNS = ("bf16", "fp8")
SET_HERE = ("--training.steps", "--metrics.log_freq", "--checkpoint.enable", "--job.dump_folder")
"""Config fields this program sets for both runs (with the module's float8 fields)."""


def run_argv(config: str, steps: int, folder: Path, overrides: list[str], float8: list[str]) -> list[str]:
    return [sys.executable, "-m", "titan_mimo.train", "--config", config, f"--training.steps={steps}",
            "--metrics.log_freq=1", "--checkpoint.enable=false", f"--job.dump_folder={folder}",
            *overrides, *float8]


def float8_args(modules: list[str], recipe: str, layers: str) -> dict[str, list[str]]:
    return {"bf16": [f"--modules.{m}.float8=none" for m in modules],
            "fp8": [a for m in modules
                    for a in (f"--modules.{m}.float8={recipe}", f"--modules.{m}.float8_filter={layers}")]}


def read_losses(metrics: Path, steps: int) -> tuple[list[float], dict[int, float]]:
    """(loss of steps 1..steps, {step: validation loss}) from a run's metrics.jsonl."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = {r["step"]: r["loss"] for r in records}
    missing = [s for s in range(1, steps + 1) if s not in losses]
    if missing or len(records) != steps:
        raise ValueError(f"{metrics}: {len(records)} records for {steps} steps (missing steps "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}); one record per step expected")
    return [losses[s] for s in range(1, steps + 1)], {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def shown_steps(steps: int, every: int) -> list[int]:
    return sorted({1, *range(every, steps + 1, every), steps})


def relative_pct(value: float, reference: float) -> float:
    return 100 * (value - reference) / reference


def summarise(losses: dict[str, list[float]], val: dict[str, dict[int, float]], steps: int, every: int,
              tail: int) -> dict:
    """The comparison: losses at the shown steps, validation losses, the tail means and their
    relative difference (fp8 - bf16, in % of bf16)."""
    tail = min(tail, steps)
    means = {name: sum(losses[name][-tail:]) / tail for name in RUNS}
    val_steps = sorted(set(val["bf16"]) & set(val["fp8"]))
    return {
        "at_steps": {str(s): {name: losses[name][s - 1] for name in RUNS} for s in shown_steps(steps, every)},
        "val_loss": {str(s): {name: val[name][s] for name in RUNS} for s in val_steps},
        "tail_steps": tail,
        "tail_mean": means,
        "relative_difference_pct": relative_pct(means["fp8"], means["bf16"]),
        "is_finite": all(math.isfinite(x) for name in RUNS for x in losses[name]),
    }


def table(result: dict) -> str:
    env, s = result["environment"], result["summary"]
    lines = [f"{env['date']}, {env.get('gpu', 'no GPU')}, torch {env['torch']}, commit {env.get('commit')}: "
             f"`{result['config']}`, float8 = {result['recipe']}, float8_filter = {result['filter']} in "
             f"{result['module']}, {result['steps']} steps", "", f"    {result['command']}", "",
             "| step | bf16 loss | fp8 loss | fp8 − bf16 |", "|---|---|---|---|"]
    for step, v in s["at_steps"].items():
        lines.append(f"| {step} | {v['bf16']:.4f} | {v['fp8']:.4f} | {relative_pct(v['fp8'], v['bf16']):+.2f}% |")
    for step, v in s["val_loss"].items():
        lines.append(f"| {step} (validation) | {v['bf16']:.4f} | {v['fp8']:.4f} | "
                     f"{relative_pct(v['fp8'], v['bf16']):+.2f}% |")
    first = result["steps"] - s["tail_steps"] + 1
    m = s["tail_mean"]
    lines.append(f"| mean of steps {first}–{result['steps']} | {m['bf16']:.4f} | {m['fp8']:.4f} | "
                 f"**{s['relative_difference_pct']:+.2f}%** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, overrides = split_passthrough(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.float8_convergence",
                                description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--config", required=True)
    p.add_argument("--module", default="language", help="the module(s) whose linears become float8 (a,b)")
    p.add_argument("--recipe", choices=("rowwise", "tensorwise"), default="tensorwise")
    p.add_argument("--filter", choices=("auto", "all"), default="auto", help="modules.<module>.float8_filter")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", required=True)
    p.add_argument("--parallel", action="store_true", help="run both at once (one GPU holds both)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--every", type=int, default=50, help="show the loss every this many steps")
    p.add_argument("--tail", type=int, default=20, help="compare the mean loss of the last this many steps")
    p.add_argument("--max-difference", type=float, default=None,
                   help="fail if the tail means differ by more than this many % (default: report only)")
    opts = p.parse_args(own)
    if opts.steps < 1 or opts.every < 1 or opts.tail < 1:
        p.error("--steps, --every and --tail must be >= 1")
    modules = opts.module.split(",")
    module_fields = tuple(f"--modules.{m}.{k}" for m in modules for k in ("float8", "float8_filter"))
    for arg in overrides:
        if arg.split("=")[0] in SET_HERE + module_fields:
            p.error(f"{arg}: set by this program ({', '.join(SET_HERE + module_fields)}); use --steps, --recipe, "
                    "--filter")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    argvs = {}
    for name, float8 in float8_args(modules, opts.recipe, opts.filter).items():
        # The trainer appends to metrics.jsonl: a new run into the same --out starts it afresh.
        (out / name / "metrics.jsonl").unlink(missing_ok=True)
        argvs[name] = run_argv(opts.config, opts.steps, out / name, overrides, float8)

    def run(name: str) -> int | str:
        return run_logged(argvs[name], out / f"{name}.log", opts.timeout, f"float8_convergence: {name}")
    with ThreadPoolExecutor(len(RUNS) if opts.parallel else 1) as pool:
        codes = dict(zip(RUNS, pool.map(run, RUNS)))
    failed = [name for name in RUNS if codes[name] != 0]
    for name in failed:
        print(f"float8_convergence: the {name} run failed (exit {codes[name]}); the end of {out / f'{name}.log'}:\n"
              + "\n".join(f"    {line}" for line in log_tail(out / f"{name}.log", 30)), file=sys.stderr, flush=True)
    if failed:
        return 1
    read = {name: read_losses(out / name / "metrics.jsonl", opts.steps) for name in RUNS}
    losses = {name: read[name][0] for name in RUNS}
    summary = summarise(losses, {name: read[name][1] for name in RUNS}, opts.steps, opts.every, opts.tail)
    result = {"config": opts.config, "module": opts.module, "recipe": opts.recipe, "filter": opts.filter,
              "steps": opts.steps, "overrides": overrides,
              "command": shlex.join(["python", "-m", "benchmarks.float8_convergence", *argv]),
              "environment": environment(), "runs": {name: {"argv": argvs[name][1:], "losses": losses[name]}
                                                     for name in RUNS},
              "summary": summary}
    (out / "convergence.json").write_text(json.dumps(result, indent=1))
    text = table(result)
    (out / "table.md").write_text(text)
    print(text, flush=True)
    if not summary["is_finite"]:
        print("float8_convergence: a loss is not finite (convergence.json has every step's)", file=sys.stderr)
        return 1
    if opts.max_difference is not None and abs(summary["relative_difference_pct"]) > opts.max_difference:
        print(f"float8_convergence: the tail means differ by {summary['relative_difference_pct']:+.2f}%, "
              f"more than --max-difference {opts.max_difference}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
