"""Tune a config on one GPU: the bench over every combination of some config values, one process
each, as one table (step time, the host's time to issue a step, MFU, memory, allocator retries).

    python -m benchmarks.sweep --config train_configs/hybrid_2b_1gpu.toml --out outputs/sweep \\
        --grid training.micro_batch_size,training.global_batch_size=3,4,6 \\
        --grid modules.language.memory_budget=0.9,1.0 [--timeout 600] [-- --warmup 2 --steps 5]

A `--grid KEYS=V1,V2,...` sets every key of its comma-separated KEYS to the same value (a micro
batch and its global batch move together); several grids multiply. Arguments after `--` go to
every bench (`python -m titan_mimo.bench --config X --no-bare ...`). A combination that fails or
runs out of time is a row saying so; the others still run. Writes `<i>.json` and `<i>.log` per
combination, `sweep.json` and `table.md` under --out, and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from benchmarks.run import bench, run_command, split_passthrough


def parse_grid(text: str) -> list[list[str]]:
    """`a,b=1,2` -> [["--a=1", "--b=1"], ["--a=2", "--b=2"]]."""
    keys, sep, values = text.partition("=")
    if not sep or not keys or not values:
        raise argparse.ArgumentTypeError(f"--grid {text!r}: expected KEYS=V1,V2,... (e.g. training.seq_len=4096,8192)")
    return [[f"--{k}={v}" for k in keys.split(",")] for v in values.split(",")]


def combinations(grids: list[list[list[str]]]) -> list[list[str]]:
    """Every pick of one value per grid, as bench overrides."""
    return [[arg for choice in pick for arg in choice] for pick in itertools.product(*grids)]


def run_one(i: int, config: str, overrides: list[str], bench_args: list[str], out: Path, timeout_s: float) -> dict:
    """Combination `i`: the bench's result, or {"error": why} (`benchmarks.run.run_command`)."""
    got = run_command(bench(config, "--no-bare", *overrides, *bench_args), str(i), out, False, timeout_s)
    return got if "error" in got else got["titan_mimo"]


def table(config: str, rows: list[tuple[list[str], dict]]) -> str:
    lines = [f"`{config}`", "", "| overrides | step | host | MFU | memory | retries |", "|---|---|---|---|---|---|"]
    for overrides, r in rows:
        what = " ".join(overrides) or "(the config)"
        if "error" in r:
            lines.append(f"| {what} | failed: {r['error']} | | | | |")
            continue
        host = f"{r['host_s'] * 1e3:.0f} ms" if r.get("host_s") else "—"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else f"{r['tflops']:.3f} TFLOP/s"
        lines.append(f"| {what} | {r['step_s'] * 1e3:.1f} ms | {host} | {mfu} | {r['peak_mem_gib']:.1f} GiB "
                     f"| {r['alloc_retries']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, bench_args = split_passthrough(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--grid", type=parse_grid, action="append", default=[], help="KEYS=V1,V2,... (repeatable)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per combination")
    opts = p.parse_args(own)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [(overrides, run_one(i, opts.config, overrides, bench_args, out, opts.timeout))
            for i, overrides in enumerate(combinations(opts.grid))]
    (out / "sweep.json").write_text(json.dumps({"config": opts.config, "bench_args": bench_args,
                                                "rows": [{"overrides": o, "result": r} for o, r in rows]}, indent=1))
    text = table(opts.config, rows)
    (out / "table.md").write_text(text)
    print(text, flush=True)
    return 1 if any("error" in r for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
