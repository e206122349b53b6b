"""One recorded step of every rank as one timeline (`metrics.timeline_steps`).

Each rank records its spans on its `Timeline` (titan_mimo/timing.py); after the step, rank 0
gathers them (`write_step`) into dump_folder/timeline/step-N.json, Chrome trace events that
Perfetto (ui.perfetto.dev) and chrome://tracing open: one track per rank, grouped by module,
named by kind, module and micro-batch ("language F3 (stage 1)"); and step-N.png, a Gantt chart
drawn from that JSON alone (`draw`; matplotlib, the `timeline` extra): one row per rank, a
colour per kind of work, waits hatched, the measured pipeline bubble and bridge-wait fractions
next to the theoretical (p - 1) / (v m + p - 1).

    python -m titan_mimo.timeline DUMP_FOLDER --step N [--no-png]

prints each rank's summary (step time, time in spans, bridge waits, bubble) and redraws the PNG.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from titan_mimo.config import JobConfig
from titan_mimo.distributed import gather_json
from titan_mimo.schedule import theoretical_bubble_fraction
from titan_mimo.topology import Topology

MATPLOTLIB_MISSING = ("drawing the timeline (step-N.png) needs matplotlib: pip install 'titan_mimo[timeline]'; "
                      "or set metrics.timeline_png = false to write the JSON alone and draw it later with "
                      "python -m titan_mimo.timeline DUMP_FOLDER --step N")

STYLES = {
    "data": ("#d9d9d9", "data"),
    "loss_tokens": ("#f0f0f0", "loss-token count (world sum)"),
    "encoder_forward": ("#9e86c8", "encoder forward"),
    "encoder_backward": ("#e0b86b", "encoder backward"),
    "forward": ("#4c72b0", "language forward"),
    "backward": ("#55a868", "language backward"),
    "backward_weight": ("#8fc79a", "language weight backward"),
    "loss": ("#da8bc3", "loss"),
    "grad_reduce": ("#8c8c8c", "stage grad reduction"),
    "global_reduce": ("#555555", "grad norm + world reduce"),
    "clip": ("#937860", "grad clipping"),
    "optimizer": ("#dd8452", "optimizer step"),
    "checkpoint": ("#64b5cd", "checkpoint save"),
    "bridge_wait": ("#f2c4c4", "bridge wait"),
    "pipeline_wait": ("#ffffff", "pipeline wait (bubble)"),
}
"""Span kind -> (colour, legend label); encoders' forward and backward have kinds of their own."""
WAITS = {"bridge_wait": ("////", "#c44e52"), "pipeline_wait": ("xxx", "#9a9a9a"), "loss_tokens": ("...", "#9a9a9a")}
"""Kinds drawn hatched: (hatch, hatch colour)."""
CONTAINERS = ("schedule",)
"""Kinds that hold other spans (the pipelining schedule): drawn as the waits inside them."""
LETTERS = {"forward": "F", "backward": "B", "backward_weight": "W"}
DARK = ("forward", "backward", "global_reduce", "encoder_forward")
"""Kinds whose bars take white labels."""
BAR = 0.62
"""Bar height (rows are 1 apart)."""


# ---- merging on rank 0 -------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise ValueError (a configuration error) if the PNG is asked for without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError(f"metrics.timeline_steps: {MATPLOTLIB_MISSING}")


def rank_label(topo: Topology) -> tuple[str, str]:
    """(group, label) of this rank's track: the modules it computes, and each with its
    coordinates on the module's axes of size > 1 ("language pp1 dp0")."""
    names = topo.my_modules
    parts = []
    for name in names:
        p, c = topo.placements[name], topo.coords(name)
        axes = [f"pp{c['pp']}" if p.pp > 1 else "", f"dp{topo.dp_rank(name)}" if p.dp > 1 else "",
                f"tp{c['tp']}" if p.tp > 1 else ""]
        parts.append(" ".join([name] + [a for a in axes if a]))
    return "+".join(names), " + ".join(parts)


def write_step(recorded: dict | None, *, cfg: JobConfig, topo: Topology, host_group, step: int) -> Path | None:
    """Every rank calls this after recorded step `step` (1-based) with its `Timeline.take()`:
    rank 0 gathers every rank's spans, writes timeline/step-N.json (and .png unless
    `metrics.timeline_png` is off) under the dump folder and returns the JSON's path."""
    group, label = rank_label(topo)
    mine = {"rank": topo.rank, "group": group, "label": label, "recorded": recorded}
    gathered = gather_json(mine, host_group)
    if gathered is None:
        return None
    lm = topo.placements[topo.language]
    meta = {"step": step, "layout": topo.describe(), "n_microbatches": topo.n_microbatches,
            "pipeline_schedule": cfg.parallelism.pipeline_schedule if lm.pp > 1 else "",
            "pp": lm.pp, "stages_per_rank": cfg.parallelism.stages_per_rank if lm.pp > 1 else 1,
            "bubble_fraction_theory": theoretical_bubble_fraction(lm.pp, topo.n_microbatches,
                                                                  cfg.parallelism.stages_per_rank),
            "language": topo.language, "encoders": list(cfg.encoders)}
    trace = chrome_trace(gathered, meta)
    folder = Path(cfg.job.dump_folder) / "timeline"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step}.json"
    path.write_text(json.dumps(trace))
    if cfg.metrics.timeline_png:
        draw(trace, path.with_suffix(".png"))
    return path


def _event_name(span: dict, meta: dict) -> str:
    kind, module, mb = span["kind"], span["module"], span["mb"]
    if kind in LETTERS:
        stage = f" (stage {span['stage']})" if span["stage"] is not None and meta["pp"] > 1 else ""
        return f"{module} {LETTERS[kind]}{mb}{stage}"
    if kind == "bridge_wait":
        return f"bridge wait: {module} {span['what']}" + (f" {mb}" if mb is not None else "")
    if kind == "schedule":
        return f"{meta['pipeline_schedule']} schedule"
    if kind == "grad_reduce":
        return f"grad reduce (stage {span['stage']})"
    return f"{kind} {mb}" if mb is not None else kind


def chrome_trace(ranks: list[dict], meta: dict) -> dict:
    """Chrome trace events of every rank's recorded step: one process per group of ranks
    (the module), one thread per rank, complete ("X") events in microseconds from the earliest
    rank's start; `meta` and each rank's step window go under the "titan_mimo" key."""
    missing = [r["rank"] for r in ranks if r["recorded"] is None]
    if missing:
        raise RuntimeError(f"timeline of step {meta['step']}: ranks {missing} recorded nothing")
    t0 = min(r["recorded"]["start"] for r in ranks)
    groups = list(dict.fromkeys(r["group"] for r in ranks))
    events, rank_meta = [], []
    for pid, group in enumerate(groups):
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": group}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})

    def us(t: float) -> float:
        return round((t - t0) * 1e6, 3)

    for r in sorted(ranks, key=lambda r: r["rank"]):
        pid, tid, rec = groups.index(r["group"]), r["rank"], r["recorded"]
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                       "args": {"name": f"rank {tid}: {r['label']}"}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        rank_meta.append({"rank": tid, "group": r["group"], "label": r["label"], "clock": rec["clock"],
                          "clock_offset_s": rec["offset_s"], "start_us": us(rec["start"]), "end_us": us(rec["end"])})
        for s in rec["spans"]:
            kind = s["kind"]
            if kind in ("forward", "backward") and s["module"] in meta["encoders"]:
                kind = f"encoder_{kind}"
            events.append({"ph": "X", "name": _event_name(s, meta), "cat": kind, "pid": pid, "tid": tid,
                           "ts": us(s["start"]), "dur": round((s["end"] - s["start"]) * 1e6, 3),
                           "args": {"kind": kind, "module": s["module"], "mb": s["mb"], "stage": s["stage"],
                                    "what": s["what"], "depth": s["depth"]}})
    return {"traceEvents": events, "displayTimeUnit": "ms", "titan_mimo": {**meta, "ranks": rank_meta}}


# ---- reading a trace ---------------------------------------------------------------------------


def rank_spans(trace: dict) -> dict[int, list[dict]]:
    """rank -> its spans {"kind", "module", "mb", "stage", "depth", "start", "end"} (ms)."""
    out: dict[int, list[dict]] = {r["rank"]: [] for r in trace["titan_mimo"]["ranks"]}
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            out[e["tid"]].append({**e["args"], "start": e["ts"] / 1e3, "end": (e["ts"] + e["dur"]) / 1e3})
    return out


def pipeline_waits(spans: list[dict]) -> list[tuple[float, float]]:
    """The parts of a rank's pipelining schedule outside its own stage work (its direct
    children): the pipeline's fill, drain and waits for the neighbouring stages (ms)."""
    gaps = []
    for outer in (s for s in spans if s["kind"] in CONTAINERS):
        inner = sorted((s["start"], s["end"]) for s in spans
                       if s["depth"] == outer["depth"] + 1 and outer["start"] <= s["start"] <= outer["end"])
        t = outer["start"]
        for a, b in inner:
            if a > t:
                gaps.append((t, a))
            t = max(t, b)
        if outer["end"] > t:
            gaps.append((t, outer["end"]))
    return gaps


def summary(trace: dict) -> list[dict]:
    """Per rank: the step window, the time its spans cover (outermost spans inside the window),
    the share of the window blocked on the bridge, and (pipelined language ranks) the share of
    the schedule outside its stage work, as `bubble_fraction` in metrics.jsonl."""
    spans_by_rank = rank_spans(trace)
    rows = []
    for r in trace["titan_mimo"]["ranks"]:
        spans = spans_by_rank[r["rank"]]
        start, end = r["start_us"] / 1e3, r["end_us"] / 1e3
        step_ms = end - start
        in_step = [s for s in spans if s["start"] < end and s["kind"] != "checkpoint"]
        covered = sum(s["end"] - s["start"] for s in in_step if s["depth"] == 0)
        bridge = sum(s["end"] - s["start"] for s in in_step if s["kind"] == "bridge_wait")
        schedule = sum(s["end"] - s["start"] for s in spans if s["kind"] in CONTAINERS)
        bubble = sum(b - a for a, b in pipeline_waits(spans))
        rows.append({**r, "step_ms": step_ms, "spans_ms": covered, "covered": covered / step_ms if step_ms else 0.0,
                     "has_bridge": any(s["kind"] == "bridge_wait" for s in spans),
                     "bridge_wait": bridge / step_ms if step_ms else 0.0,
                     "bubble": bubble / schedule if schedule else None})
    return rows


def headline(trace: dict, rows: list[dict]) -> list[str]:
    """The measured bubble against the theory, and the bridge waits, in words."""
    meta = trace["titan_mimo"]
    lines = []
    bubbles = [r["bubble"] for r in rows if r["bubble"] is not None]
    p, m, v = meta["pp"], meta["n_microbatches"], meta["stages_per_rank"]
    if bubbles:
        vm = "m" if v == 1 else "vm"
        lines.append(f"pipeline bubble (mean of {len(bubbles)} language ranks): measured "
                     f"{sum(bubbles) / len(bubbles):.1%}, theory (p-1)/({vm}+p-1) = "
                     f"{p - 1}/({v * m}+{p - 1}) = {meta['bubble_fraction_theory']:.1%}"
                     f"  [{meta['pipeline_schedule']}, p = {p}, m = {m}{f', v = {v}' if v > 1 else ''}]")
    else:
        lines.append(f"no pipeline (language pp = 1): no bubble; {m} micro-batch{'es' if m != 1 else ''}")
    bridged = [r for r in rows if r["has_bridge"]]
    if bridged:
        worst = max(bridged, key=lambda r: r["bridge_wait"])
        lines.append(f"bridge waits: {sum(r['bridge_wait'] for r in bridged) / len(bridged):.1%} of the step "
                     f"(mean of {len(bridged)} ranks on a bridge; max {worst['bridge_wait']:.1%} on rank {worst['rank']})")
    return lines


# ---- the picture -------------------------------------------------------------------------------


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(MATPLOTLIB_MISSING) from None
    return Figure


def _bar_label(s: dict, multi_stage: bool) -> str:
    kind = s["kind"].removeprefix("encoder_")
    if kind in LETTERS:
        stage = f"s{s['stage']}" if multi_stage and s["stage"] is not None else ""
        return f"{LETTERS[kind]}{s['mb']}{stage}"
    return {"loss": f"L{s['mb']}" if s["mb"] is not None else "L", "data": "data", "clip": "clip",
            "optimizer": "opt", "global_reduce": "norm", "grad_reduce": "dp", "checkpoint": "ckpt"}.get(kind, "")


def draw(trace: dict, path: Path) -> None:
    """The Gantt chart of a trace (`chrome_trace`'s JSON) as a PNG at `path`."""
    Figure = _figure_class()
    meta = trace["titan_mimo"]
    ranks = meta["ranks"]
    spans_by_rank = rank_spans(trace)
    rows = summary(trace)
    lines = headline(trace, rows)
    t0 = min(r["start_us"] for r in ranks) / 1e3
    t1 = max([r["end_us"] / 1e3 for r in ranks] + [s["end"] for ss in spans_by_rank.values() for s in ss])
    n = len(ranks)
    width_in, left_in, right_in = 15.0, 2.1, 2.6
    fig = Figure(figsize=(width_in, 1.9 + 0.52 * n + 0.45 * len(lines)), dpi=110)
    ax = fig.add_axes((left_in / width_in, 0.0, 1 - (left_in + right_in) / width_in, 1.0))
    height_in = fig.get_figheight()
    top_in, bottom_in = 0.35 + 0.3 * len(lines), 1.15
    ax.set_position((left_in / width_in, bottom_in / height_in,
                     1 - (left_in + right_in) / width_in, 1 - (top_in + bottom_in) / height_in))
    px_per_ms = (width_in - left_in - right_in) * 72 / max(t1 - t0, 1e-9)  # points per ms
    multi_stage = meta["stages_per_rank"] > 1
    used = set()

    def bar(y, a, b, kind, h, label="", label_y=None):
        colour, _ = STYLES.get(kind, ("#bbbbbb", kind))
        hatch, edge = WAITS.get(kind, (None, "white"))
        ax.barh(y, b - a, left=a - t0, height=h, color=colour, hatch=hatch, edgecolor=edge,
                linewidth=0.6 if hatch is None else 0.0)
        used.add(kind)
        if label and (b - a) * px_per_ms > 5.0 * len(label) + 2:
            ax.text((a + b) / 2 - t0, y if label_y is None else label_y, label, ha="center", va="center",
                    fontsize=8, zorder=5, color="white" if kind in DARK else "black")

    for y, r in enumerate(ranks):
        spans = spans_by_rank[r["rank"]]
        containers = [s for s in spans if s["kind"] in CONTAINERS]
        for a, b in pipeline_waits(spans):
            bar(y, a, b, "pipeline_wait", BAR)
        drawn = []
        for s in spans:
            if s["kind"] in CONTAINERS:
                continue
            # Nesting below a container is not nesting on the picture (stage work in a schedule).
            depth = s["depth"] - sum(1 for c in containers if c["depth"] < s["depth"]
                                     and c["start"] <= s["start"] and s["end"] <= c["end"])
            drawn.append((depth, s))
        for depth, s in sorted(drawn, key=lambda d: d[0]):
            # A nested span (a bridge wait inside a stage forward, a colocated encoder inside the
            # language forward) fills the lower half of its parent; the parent's label moves up.
            has_nested = any(d > depth and s["start"] <= c["start"] and c["end"] <= s["end"] for d, c in drawn)
            if depth == 0:
                bar(y, s["start"], s["end"], s["kind"], BAR, _bar_label(s, multi_stage),
                    label_y=y - BAR / 4 if has_nested else None)
            else:
                bar(y + BAR / 4, s["start"], s["end"], s["kind"], BAR / 2, _bar_label(s, multi_stage))
    for y, row in enumerate(rows):
        notes = []
        if row["has_bridge"]:
            notes.append(f"bridge {row['bridge_wait']:.0%}")
        if row["bubble"] is not None:
            notes.append(f"bubble {row['bubble']:.0%}")
        notes.append(f"{row['step_ms']:.1f} ms")
        ax.text(1.01, y, "  ".join(notes), transform=ax.get_yaxis_transform(), va="center", fontsize=9)
    for y in range(1, n):  # a line between modules
        if ranks[y]["group"] != ranks[y - 1]["group"]:
            ax.axhline(y - 0.5, color="#444444", linewidth=0.8)
    ax.set_yticks(range(n), [f"rank {r['rank']}  {r['label']}" for r in ranks], fontsize=9)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, (t1 - t0) * 1.005)
    clock = ("CUDA events: device time" if all(r["clock"] == "cuda" for r in ranks) else
             "host time" if all(r["clock"] == "host" for r in ranks) else "CUDA events and host time")
    ax.set_xlabel(f"ms from the step's start on rank 0's clock (spans: {clock})")
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.text(left_in / width_in, 1 - 0.22 / height_in, f"step {meta['step']}: {meta['layout']}",
             fontsize=12, weight="bold", va="top")
    for i, line in enumerate(lines):
        fig.text(left_in / width_in, 1 - (0.55 + 0.3 * i) / height_in, line, fontsize=10, va="top")
    from matplotlib.patches import Patch

    order = [k for k in STYLES if k in used]
    handles = [Patch(facecolor=STYLES[k][0], edgecolor=WAITS.get(k, (None, "#888888"))[1],
                     hatch=WAITS.get(k, (None,))[0], label=STYLES[k][1]) for k in order]
    fig.legend(handles=handles, loc="lower left", ncol=min(len(handles), 6), fontsize=9, frameon=False,
               bbox_to_anchor=(left_in / width_in - 0.01, 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


# ---- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m titan_mimo.timeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump_folder", type=Path, help="the run's job.dump_folder")
    parser.add_argument("--step", type=int, required=True, help="a step metrics.timeline_steps recorded")
    parser.add_argument("--no-png", action="store_true", help="print the summary only (no matplotlib needed)")
    args = parser.parse_args(argv)
    path = args.dump_folder / "timeline" / f"step-{args.step}.json"
    if not path.is_file():
        recorded = sorted(args.dump_folder.glob("timeline/step-*.json"))
        print(f"titan_mimo.timeline: no {path}; recorded: {', '.join(p.stem for p in recorded) or 'none'}",
              file=sys.stderr)
        return 2
    trace = json.loads(path.read_text())
    rows = summary(trace)
    print(f"step {args.step}: {trace['titan_mimo']['layout']}")
    print(f"{'rank':>4}  {'track':<28} {'step ms':>9} {'spans ms':>9} {'covered':>8} {'bridge':>7} {'bubble':>7}")
    for r in rows:
        bubble = "-" if r["bubble"] is None else f"{r['bubble']:.1%}"
        bridge = f"{r['bridge_wait']:.1%}" if r["has_bridge"] else "-"
        print(f"{r['rank']:>4}  {r['label']:<28} {r['step_ms']:>9.2f} {r['spans_ms']:>9.2f} "
              f"{r['covered']:>8.1%} {bridge:>7} {bubble:>7}")
    for line in headline(trace, rows):
        print(line)
    metrics = args.dump_folder / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if record.get("step") == args.step and "step_time_s" in record:
                step_ms = 1e3 * record["step_time_s"]
                shares = ", ".join(f"rank {r['rank']} {r['spans_ms'] / step_ms:.1%}" for r in rows)
                print(f"metrics.jsonl step {args.step}: step_time_s {step_ms:.2f} ms; spans / step_time_s: {shares}")
    if not args.no_png:
        try:
            draw(trace, path.with_suffix(".png"))
        except ImportError as e:
            print(f"titan_mimo.timeline: {e}", file=sys.stderr)
            return 2
        print(f"drew {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
