"""The headline table in one command: every row of `ROWS`, each with its peer in the same run, on
one GPU host; results as JSON and as a markdown table (the one in docs/benchmarks.md).

    python -m benchmarks.run --out outputs/bench [--rows attn_1b,vit_h16] [--timeout 1800]
    python -m benchmarks.run --dry-run            # the commands, nothing run
    python -m benchmarks.run --out /tmp/b --tiny  # every row at debug size (a CPU check)

A second run with `--rows` into the same --out folder on the same machine and software adds its
rows to the earlier run's table (one table from several commands, each under a time limit).

Each row runs titan_mimo (`python -m titan_mimo.bench --config ...`, or another program) and its
peer as separate processes, one after the other; a command shared by rows (the timm peer of both
ViT rows, the bench whose bare loop is the colocated row's peer) runs once. Every program writes
`{label: result}` JSON (`benchmarks/common.py`); a row names the command and the label of its
two results. The ratio is titan_mimo's achieved TFLOP/s over the peer's, each by its own FLOP
count: the MFU ratio (models that differ in size compare by MFU, not tokens/s).

Outputs under --out: `<command>.json` and `<command>.log` per command, `results.json` (the
machine, the software, every row's results) and `table.md`. Exit code 1 if any command failed;
the table then says which.

Adding a row: append a `Row` to `ROWS`: a name, what it measures, and the command and label of
titan_mimo's result and of the peer's (None for a row without a peer). `tiny` arguments make the
row run at debug size on any machine (a bench row's config overrides; peers take `--tiny`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Command:
    args: tuple[str, ...]
    """A Python program and its arguments (run as `python ARGS --json PATH`)."""
    tiny: tuple[str, ...] = ()
    """Appended with --tiny: the program at debug size."""
    is_bench: bool = False
    """titan_mimo.bench: also gets `--job.dump_folder` under --out."""


@dataclass(frozen=True)
class Result:
    command: Command
    label: str
    """Which result of the command's JSON."""


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    ours: Result
    peer: Result | None
    peer_what: str = ""


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """A program's own arguments and those after `--`, which it passes on to what it runs."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def bench(config: str, *overrides: str, tiny: tuple[str, ...] = ()) -> Command:
    return Command(("-m", "titan_mimo.bench", "--config", config, *overrides), tiny, is_bench=True)


# Debug sizes of the configs' modules: no compile, fp32, the pure-PyTorch kernels.
TINY_LM = ("--modules.language.model=hybrid_lm/debug", "--modules.language.compile=false",
           "--modules.language.activation_checkpoint=none", "--modules.language.model_args.ssd_backend=torch",
           "--modules.language.model_args.mamba_kernels=torch",
           "--training.seq_len=64", "--training.mixed_precision=fp32", "--warmup", "1", "--steps", "2")
TINY_VLM = TINY_LM + ("--modules.vision.model=vit/debug", "--modules.vision.compile=false",
                      "--modules.vision.activation_checkpoint=none",
                      "--modules.vision.model_args.attention_backend=sdpa", "--data.image_sizes=[[16, 16]]",
                      "--training.coordinate_descent_tuning=false")
VLM = "train_configs/vlm_hybrid_1gpu.toml"
# The ViT of the one-GPU config alone, at batch 12, Inductor's kernels tuned.
VIT = ("--encoder", "vision", "--training.global_batch_size=12", "--training.micro_batch_size=12",
       "--training.coordinate_descent_tuning=true")
TINY_PEER = ("--tiny", "--warmup", "1", "--steps", "2")
TIMM = Result(Command(("-m", "benchmarks.peer_vit", "--batch", "12", "--image", "1024"), TINY_PEER), "timm")
MAMBA2 = Command(("-m", "benchmarks.mamba2_layer"), TINY_PEER)
MOE_LAYER = Command(("-m", "benchmarks.moe_layer"), TINY_PEER)
TINY_MOE = TINY_LM[1:] + ("--modules.language.model=hybrid_lm/debug_moe",
                          "--modules.language.model_args.moe_backend=torch")
COLOCATED = bench(VLM, tiny=TINY_VLM)
ATTN_1B = Result(bench("train_configs/attn_1b_1gpu.toml", tiny=TINY_LM), "titan_mimo")
VIT_H16 = Result(bench(VLM, *VIT, tiny=TINY_VLM), "titan_mimo")
HYBRID_2B = Result(bench("train_configs/hybrid_2b_1gpu.toml", "--no-bare", tiny=TINY_LM), "titan_mimo")
# FP8 rows: the same command with the module's block linears in float8 (every eligible one), their
# peer the bf16 row's own result (one run serves both rows). At debug size the float8 linears run
# emulated on a CPU under bf16 autocast.
FP8_TINY = ("--training.mixed_precision=bf16",)

ROWS = [
    Row("attn_1b", "attention-only LM at Llama-3-1B shape, 2 x 8192 tokens, compiled",
        ATTN_1B,
        Result(Command(("-m", "benchmarks.peer_llama3", "--model", "1B", "--batch", "2", "--seq", "8192"),
                       TINY_PEER), "torchtitan"),
        "torchtitan 0.2.2 Llama-3 1B, compiled"),
    Row("vit_h16", "ViT-H/16 at 1024², batch 12, compiled, FlashAttention-4",
        VIT_H16, TIMM, "timm ViT-H/16, compiled"),
    Row("vit_h16_sdpa", "ViT-H/16 at 1024², batch 12, compiled, SDPA",
        Result(bench(VLM, *VIT, "--modules.vision.model_args.attention_backend=sdpa", tiny=TINY_VLM),
               "titan_mimo"), TIMM, "timm ViT-H/16, compiled"),
    Row("hybrid_2b", "hybrid Mamba2/attention LM 2B, 3 x 8192 tokens, mamba-ssm scan, compiled",
        HYBRID_2B, None),
    # At debug size on a CPU the blocks cannot be captured: the tiny run is the plain one.
    Row("hybrid_2b_graphs", "hybrid_2b with its blocks as two CUDA graphs per micro-batch (`cuda_graphs`)",
        Result(bench("train_configs/hybrid_2b_1gpu.toml", "--no-bare", "--modules.language.cuda_graphs=true",
                     tiny=TINY_LM + ("--modules.language.cuda_graphs=false",)), "titan_mimo"),
        HYBRID_2B, "hybrid_2b kernel by kernel (its row's run)"),
    Row("mamba2_layer", "one Mamba2 layer at hybrid_2b's shape, 2 x 8192 tokens, fwd+bwd",
        Result(MAMBA2, "titan_mimo"), Result(MAMBA2, "mamba_ssm"), "mamba-ssm Mamba2 layer"),
    Row("nemotron_moe_1gpu", "Nemotron-H MoE LM, 8 layers (3 MoE: 128 experts top-6), 8 x 8192 tokens, "
        "grouped GEMM, compiled; MFU by active FLOPs",
        Result(bench("train_configs/nemotron_moe_1gpu.toml", "--no-bare", tiny=TINY_MOE), "titan_mimo"), None),
    Row("moe_layer", "one MoE block at the reference's widths (2688, 128 experts of 1856 top-6, shared 3712), "
        "8192 tokens, fwd+bwd, compiled; TFLOP/s by active FLOPs",
        Result(MOE_LAYER, "titan_mimo"), Result(MOE_LAYER, "torchtitan"),
        "torchtitan 0.2.2 MoE layer (SwiGLU experts, grouped GEMM)"),
    Row("attn_1b_fp8", "attn_1b with FP8 block linears (torchao tensorwise, every eligible linear)",
        Result(bench("train_configs/attn_1b_1gpu.toml", "--no-bare", "--modules.language.float8=tensorwise",
                     "--modules.language.float8_filter=all", tiny=TINY_LM + FP8_TINY), "titan_mimo"),
        ATTN_1B, "attn_1b in bf16 (its row's run)"),
    Row("vit_h16_fp8", "vit_h16 with FP8 block linears (torchao tensorwise, every eligible linear)",
        Result(bench(VLM, *VIT, "--no-bare", "--modules.vision.float8=tensorwise", "--modules.vision.float8_filter=all",
                     tiny=TINY_VLM + FP8_TINY), "titan_mimo"),
        VIT_H16, "vit_h16 in bf16 (its row's run)"),
    Row("vlm_1gpu", "ViT-H/16 + hybrid_2b colocated on one GPU: the trainer (`vlm_hybrid_1gpu.toml`)",
        Result(COLOCATED, "titan_mimo"), Result(COLOCATED, "bare"), "the same modules in a bare loop"),
]


CHILD_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "TRITON_CACHE_AUTOTUNING": "1"}
"""Set for every command unless already set: the allocator setting every GPU number here was
measured with, and mamba-ssm's Triton autotuning results kept on disk for the next process."""


def argv_of(command: Command, tiny: bool) -> list[str]:
    return [sys.executable, *command.args, *(command.tiny if tiny else ())]


def command_ids(rows: list[Row]) -> dict[Command, str]:
    """Each distinct command, named after the first row that runs it."""
    ids: dict[Command, str] = {}
    for row in rows:
        for role, result in (("", row.ours), ("_peer", row.peer)):
            if result is not None and result.command not in ids:
                ids[result.command] = row.name + role
    return ids


def run_logged(argv: list[str], log: Path, timeout_s: float, who: str = "benchmarks.run") -> int | str:
    """Run a program (`CHILD_ENV` added), its stdout and stderr into `log`; its exit code, or
    "timed out after N s". Prints the command and how it ended, prefixed by `who`."""
    # One write per line: runs in threads (float8_convergence --parallel) print at once.
    sys.stdout.write(f"{who}: {shlex.join(argv[1:])}\n")
    sys.stdout.flush()
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s,
                                env={**CHILD_ENV, **os.environ}).returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {timeout_s:.0f} s"
    sys.stdout.write(f"{who}: exit {rc} after {time.perf_counter() - start:.0f} s\n")
    sys.stdout.flush()
    return rc


def log_tail(log: Path, lines: int) -> list[str]:
    """The last `lines` lines of a log (what a failure report quotes)."""
    return log.read_text(errors="replace").strip().splitlines()[-lines:] if log.exists() else []


def run_command(command: Command, name: str, out: Path, tiny: bool, timeout_s: float) -> dict:
    """Run one command; its results ({label: result}), or {"error": why}."""
    argv = argv_of(command, tiny) + ["--json", str(out / f"{name}.json")]
    if command.is_bench:
        argv.append(f"--job.dump_folder={out / name}")
    rc = run_logged(argv, out / f"{name}.log", timeout_s, f"benchmarks.run: {name}")
    if rc != 0:
        tail = log_tail(out / f"{name}.log", 1) or [""]
        return {"error": f"exit {rc}: {tail[0][:200]}"}
    return json.loads((out / f"{name}.json").read_text())


def environment() -> dict:
    """The machine and software of the run (what the table's header says)."""
    import torch
    env = {"date": datetime.date.today().isoformat(), "python": sys.version.split()[0],
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "env": {k: os.environ.get(k, v) for k, v in CHILD_ENV.items()}}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True).stdout.strip().splitlines()[0]
    for package in ("triton", "torchtitan", "timm", "mamba-ssm", "flash-attn-4", "transformer-engine"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    env["commit"] = commit.stdout.strip() or None
    return env


def _cell(r: dict | None) -> str:
    if r is None:
        return "—"
    if "error" in r:
        return f"failed ({r['error']})"
    rate = (f"{r['tokens_per_s'] / 1e3:.1f}k tok/s" if r.get("tokens_per_s")
            else f"{r['images_per_s']:.2f} img/s" if r.get("images_per_s") else f"{r['step_s'] * 1e3:.1f} ms")
    mfu = f"**{100 * r['mfu']:.1f}%**" if r.get("mfu") is not None else f"{r['tflops']:.2f} TFLOP/s"
    host = f" (host {r['host_s'] * 1e3:.0f})" if r.get("host_s") else ""
    return f"{rate}, {mfu}, {r['step_s'] * 1e3:.1f} ms/step{host}, {r['peak_mem_gib']:.0f} GiB"


def ratio(ours: dict | None, peer: dict | None) -> float | None:
    ok = ours and peer and "error" not in ours and "error" not in peer and peer["tflops"] > 0
    return ours["tflops"] / peer["tflops"] if ok else None


def table(rows: list[Row], results: dict[str, dict], env: dict, command_line: str) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env.items()
                         if k not in ("date", "gpu", "driver", "commit", "env") and v)
    lines = [f"{env['date']}, {env.get('gpu', 'no GPU')} (driver {env.get('driver', 'n/a')}), "
             f"commit {env.get('commit')}; {versions}.", "",
             *(f"    {c}" for c in dict.fromkeys(results[r.name].get("run", command_line) for r in rows)), "",
             "| row | what | titan_mimo | peer, same run | ratio |", "|---|---|---|---|---|"]
    for row in rows:
        r = results[row.name]
        x = ratio(r["titan_mimo"], r["peer"])
        peer = f"{row.peer_what}: {_cell(r['peer'])}" if row.peer else "—"
        lines.append(f"| {row.name} | {row.what} | {_cell(r['titan_mimo'])} | {peer} | "
                     f"{f'{x:.2f}×' if x is not None else '—'} |")
    return "\n".join(lines) + "\n"


def merged(path: Path, results: dict[str, dict], env: dict) -> tuple[dict[str, dict], list[Row]]:
    """The rows just run, with the rows of an earlier run into the same --out folder that this run
    did not repeat (`--rows` in several commands, e.g. within a time limit per command, builds one
    table). Only an earlier run on the same GPU and software is merged; otherwise it is replaced."""
    if path.exists():
        earlier = json.loads(path.read_text())
        same = {k: v for k, v in earlier["environment"].items() if k not in ("date", "commit")} == \
               {k: v for k, v in env.items() if k not in ("date", "commit")}
        if same:
            results = {**{k: v for k, v in earlier["rows"].items() if k in {r.name for r in ROWS}}, **results}
        else:
            print(f"benchmarks.run: {path} is from another machine or software: replaced", flush=True)
    return results, [r for r in ROWS if r.name in results]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--out", default=None, help="folder for the results (required unless --dry-run)")
    p.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    p.add_argument("--tiny", action="store_true", help="every row at debug size (a CPU check)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    opts = p.parse_args(argv)
    rows = ROWS
    if opts.rows:
        names = opts.rows.split(",")
        unknown = sorted(set(names) - {r.name for r in ROWS})
        if unknown:
            p.error(f"unknown rows {unknown}; rows: {', '.join(r.name for r in ROWS)}")
        rows = [r for r in ROWS if r.name in names]
    ids = command_ids(rows)
    if opts.dry_run:
        for command, name in ids.items():
            print(f"{name}: {shlex.join(['python', *argv_of(command, opts.tiny)[1:]])}")
        return 0
    if opts.out is None:
        p.error("--out is required")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {command: run_command(command, name, out, opts.tiny, opts.timeout) for command, name in ids.items()}

    def pick(result: Result | None) -> dict | None:
        if result is None:
            return None
        got = outputs[result.command]
        return got if "error" in got else got.get(result.label, {"error": f"no {result.label!r} result"})
    env = environment()
    command_line = shlex.join(["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    results = {row.name: {"titan_mimo": pick(row.ours), "peer": pick(row.peer),
                          "ratio": ratio(pick(row.ours), pick(row.peer)), "run": command_line} for row in rows}
    results, rows = merged(out / "results.json", results, env)
    (out / "results.json").write_text(json.dumps({"environment": env, "command": command_line,
                                                  "rows": results}, indent=1))
    text = table(rows, results, env, command_line)
    (out / "table.md").write_text(text)
    print(text, flush=True)
    failed = any("error" in r for row in results.values() for r in (row["titan_mimo"], row["peer"]) if r)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
