"""titan_mimo/timeline.py (and the trainer's recording of it): a recorded step of vision 1 |
language pp 2 (1F1B, 4 micro-batches) as one timeline of every rank, in the order the schedule
runs; a step not listed records nothing and communicates nothing extra; the JSON is Chrome trace
events, drawn and redrawn without the run; matplotlib is needed for the picture only."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from launcher import REPO, torchrun
from titan_mimo import timeline
from titan_mimo.timing import Timeline

WORKER = REPO / "tests" / "workers" / "loop_worker.py"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
N_MB = 4
STEPS = 4
RECORDED = 2
LAYOUT = ["--config", "train_configs/debug_cpu.toml", "--modules.vision.ranks=1", "--modules.language.pp=2",
          f"--training.steps={STEPS}", "--metrics.log_freq=1", "--metrics.enable_tensorboard=false"]
"""vision on rank 0, language pp 2 on ranks 1-2 (1F1B), 8 samples in micro-batches of 2."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The same 4 steps with step 2 recorded ("on") and with nothing recorded ("off"); and 2
    steps with step 2 recorded and saved ("checkpoint")."""
    out = tmp_path_factory.mktemp("timeline")
    png = [] if HAS_MATPLOTLIB else ["--metrics.timeline_png=false"]
    cases = [{"name": "on", "trace": True, "argv": LAYOUT + [f"--job.dump_folder={out / 'on'}",
                                                             f"--metrics.timeline_steps=[{RECORDED}]", *png]},
             {"name": "off", "trace": True, "argv": LAYOUT + [f"--job.dump_folder={out / 'off'}"]},
             {"name": "checkpoint", "argv": LAYOUT + [f"--job.dump_folder={out / 'checkpoint'}", "--training.steps=2",
                                                      "--checkpoint.enable=true", "--metrics.timeline_steps=[2]",
                                                      "--metrics.timeline_png=false"]}]
    spec = out / "cases.json"
    spec.write_text(json.dumps(cases))
    torchrun(3, WORKER, str(spec), str(out), timeout=600)
    return out


def _trace(runs: Path) -> dict:
    return json.loads((runs / "on" / "timeline" / f"step-{RECORDED}.json").read_text())


def _by(spans: list[dict], kind: str, **match) -> dict:
    """micro-batch -> the one span of `kind` matching `match`."""
    found = [s for s in spans if s["kind"] == kind and all(s[k] == v for k, v in match.items())]
    by_mb = {s["mb"]: s for s in found}
    assert len(by_mb) == len(found), found
    return by_mb


def test_the_json_is_chrome_trace_events_with_a_track_per_rank(runs: Path) -> None:
    trace = _trace(runs)
    assert trace["displayTimeUnit"] == "ms"
    names = {}
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "M") and isinstance(e["name"], str) and isinstance(e["pid"], int)
        if e["ph"] == "X":
            assert isinstance(e["tid"], int) and e["ts"] >= 0 and e["dur"] >= 0, e
        elif e["name"] in ("process_name", "thread_name"):
            names[(e["name"], e["pid"], e.get("tid"))] = e["args"]["name"]
    # Grouped by module: vision's process holds rank 0, language's ranks 1 and 2.
    assert {k[1]: v for k, v in names.items() if k[0] == "process_name"} == {0: "vision", 1: "language"}
    assert {k[2]: (k[1], v) for k, v in names.items() if k[0] == "thread_name"} == {
        0: (0, "rank 0: vision"), 1: (1, "rank 1: language pp0"), 2: (1, "rank 2: language pp1")}
    # Micro-batch ids in the labels.
    labels = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    for i in range(N_MB):
        assert {f"vision F{i}", f"vision B{i}", f"language F{i} (stage 0)", f"language B{i} (stage 1)",
                f"bridge wait: vision embeddings {i}", f"bridge wait: vision gradients {i}"} <= labels
    assert trace["titan_mimo"]["bubble_fraction_theory"] == pytest.approx(1 / 5)


def test_spans_follow_the_schedule(runs: Path) -> None:
    """Each micro-batch's encoder forward ends before the language stage 0 receives it, inside
    that stage's forward; stage 0's backward of i starts after stage 1's backward of i; every
    rank's optimizer step starts after every backward of every rank; one rank's spans nest or
    are disjoint, and spans at one depth never overlap (each rank runs serially)."""
    trace = _trace(runs)
    spans = timeline.rank_spans(trace)
    # Every rank's clock offset measured at start-up; on one machine the clocks are the same,
    # so the offsets are the measurement's error: the tolerance of comparisons across ranks.
    tol = 1e3 * sum(abs(r["clock_offset_s"]) for r in trace["titan_mimo"]["ranks"]) + 1e-3
    assert tol < 5.0, trace["titan_mimo"]["ranks"]
    enc_f, enc_b = _by(spans[0], "encoder_forward"), _by(spans[0], "encoder_backward")
    s0_f, s0_b = _by(spans[1], "forward", stage=0), _by(spans[1], "backward", stage=0)
    s1_f, s1_b = _by(spans[2], "forward", stage=1), _by(spans[2], "backward", stage=1)
    received = _by(spans[1], "bridge_wait", what="embeddings", depth=2)  # in the schedule, in the forward
    returned = _by(spans[0], "bridge_wait", what="gradients")
    for work in (enc_f, enc_b, s0_f, s0_b, s1_f, s1_b, received, returned):
        assert sorted(work) == list(range(N_MB))
    for i in range(N_MB):
        assert enc_f[i]["end"] <= received[i]["end"] + tol
        assert s0_f[i]["start"] <= received[i]["start"] and received[i]["end"] <= s0_f[i]["end"]
        assert s0_f[i]["end"] <= s1_f[i]["start"] + tol
        assert s1_b[i]["end"] <= s0_b[i]["start"] + tol
        # The gradient crosses the bridge back from inside stage 0's backward.
        assert s0_b[i]["start"] <= returned[i]["end"] + tol and returned[i]["end"] <= enc_b[i]["start"]
    backward_ends = [s["end"] for ss in spans.values() for s in ss if "backward" in s["kind"]]
    for rank, ss in spans.items():
        (optimizer,) = [s for s in ss if s["kind"] == "optimizer"]
        assert optimizer["start"] >= max(backward_ends) - tol, rank
        kinds = [s["kind"] for s in ss if s["depth"] == 0]
        assert kinds[:3] == ["data", "loss_tokens", "schedule" if rank else "encoder_forward"], kinds
        assert kinds[-3:] == ["global_reduce", "clip", "optimizer"], kinds
        for a in ss:
            for b in ss:
                if a is b:
                    continue
                disjoint = a["end"] <= b["start"] or b["end"] <= a["start"]
                a_in_b = b["start"] <= a["start"] and a["end"] <= b["end"] and a["depth"] > b["depth"]
                b_in_a = a["start"] <= b["start"] and b["end"] <= a["end"] and b["depth"] > a["depth"]
                assert disjoint or a_in_b or b_in_a, (rank, a, b)
                if a["depth"] == b["depth"]:
                    assert disjoint, (rank, a, b)


def test_a_checkpoint_save_is_part_of_its_steps_timeline(runs: Path) -> None:
    """The save that blocks the loop after a recorded step is a span after the step's end."""
    trace = json.loads((runs / "checkpoint" / "timeline" / "step-2.json").read_text())
    spans = timeline.rank_spans(trace)
    for r in trace["titan_mimo"]["ranks"]:
        (save,) = [s for s in spans[r["rank"]] if s["kind"] == "checkpoint"]
        assert save["depth"] == 0 and save["start"] >= r["end_us"] / 1e3 and save["end"] > save["start"]
    assert (runs / "checkpoint" / "checkpoint" / "step-2").is_dir()


def test_the_summary_measures_waits_and_bubbles(runs: Path) -> None:
    rows = {r["rank"]: r for r in timeline.summary(_trace(runs))}
    assert rows[0]["bubble"] is None and rows[0]["has_bridge"] and not rows[2]["has_bridge"]
    for rank in (1, 2):
        assert 0 < rows[rank]["bubble"] < 1
    for r in rows.values():
        # On CPU every span is host time: the outermost spans are the step, up to the host's
        # own bookkeeping between them.
        assert 0.9 < r["covered"] <= 1.0 + 1e-9, r
        assert 0 <= r["bridge_wait"] < 1


def test_a_step_not_listed_records_and_communicates_nothing(runs: Path) -> None:
    """Only the listed step makes clock marks; every step makes the same collective and
    point-to-point calls as in the run that records nothing; outside the steps the recorded
    run adds exactly the merge (one all_gather and one gather per rank). The listed step is read
    at once; the others are read one step late, as without a timeline."""
    for rank in range(3):
        on = json.loads((runs / "on" / f"rank{rank}.json").read_text())
        off = json.loads((runs / "off" / f"rank{rank}.json").read_text())
        assert set(on["marks"]) == {str(RECORDED)} and on["marks"][str(RECORDED)] > 4 * N_MB
        assert off["marks"] == {}
        assert on["comms"] == off["comms"] and len(on["comms"]) == STEPS
        assert on["device_reads"] == off["device_reads"] == 0
        assert on["comms_outside"] == off["comms_outside"] + 2
        assert on["events"] == ["queued 1", "queued 2", "read 1", "read 2", "queued 3", "queued 4", "read 3", "read 4"]
        assert off["events"] == ["queued 1", "queued 2", "read 1", "queued 3", "read 2", "queued 4", "read 3", "read 4"]
    assert sorted(p.name for p in (runs / "on" / "timeline").iterdir()) == (
        [f"step-{RECORDED}.json", f"step-{RECORDED}.png"] if HAS_MATPLOTLIB else [f"step-{RECORDED}.json"])
    assert not (runs / "off" / "timeline").exists()


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the picture needs matplotlib (the timeline extra)")
def test_the_picture_is_drawn_and_redrawn_from_the_json(runs: Path, tmp_path: Path, capsys) -> None:
    png = runs / "on" / "timeline" / f"step-{RECORDED}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    dump = tmp_path / "dump"
    (dump / "timeline").mkdir(parents=True)
    (dump / "timeline" / f"step-{RECORDED}.json").write_text(json.dumps(_trace(runs)))
    assert timeline.main([str(dump), "--step", str(RECORDED)]) == 0
    assert (dump / "timeline" / f"step-{RECORDED}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "theory (p-1)/(m+p-1) = 1/(4+1) = 20.0%" in out


def test_the_summary_needs_no_matplotlib(runs: Path, monkeypatch, capsys) -> None:
    """The JSON and the summary never import matplotlib; asking for the picture without it
    names the extra to install, at configuration time and from the command line."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert timeline.main([str(runs / "on"), "--step", str(RECORDED), "--no-png"]) == 0
    out = capsys.readouterr().out
    assert out.count("language pp") == 2 and "metrics.jsonl step 2: step_time_s" in out
    assert timeline.main([str(runs / "on"), "--step", str(RECORDED)]) == 2
    assert "pip install 'titan_mimo[timeline]'" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match=r"titan_mimo\[timeline\].*timeline_png = false"):
        timeline.require_matplotlib()
    assert timeline.main([str(runs / "on"), "--step", "3", "--no-png"]) == 2  # not recorded


def test_spans_nest_and_nothing_is_marked_outside_a_recorded_step() -> None:
    """Outside begin/end a span touches no clock: a CUDA timeline on a machine without CUDA
    runs them. Inside, spans record their nesting depth, and `take` hands the step over once."""
    import torch

    idle = Timeline(torch.device("cuda"))
    with idle.span("forward", "language", mb=0), idle.span("bridge_wait", "vision", mb=0):
        pass
    with idle.host_span("checkpoint"):
        pass
    assert idle.take() is None
    tl = Timeline(torch.device("cpu"), offset_s=10.0)
    tl.begin()
    with tl.span("forward", "language", mb=0, stage=0):
        with tl.span("bridge_wait", "vision", mb=0, what="embeddings"):
            pass
    with tl.span("optimizer", ""):
        pass
    tl.end()
    with tl.host_span("checkpoint"):
        pass
    step = tl.take()
    assert [(s["kind"], s["depth"]) for s in step["spans"]] == [
        ("forward", 0), ("bridge_wait", 1), ("optimizer", 0), ("checkpoint", 0)]
    assert step["offset_s"] == 10.0 and step["start"] >= 10.0
    outer, inner = step["spans"][:2]
    assert outer["start"] <= inner["start"] <= inner["end"] <= outer["end"] <= step["end"]
    assert tl.take() is None


def test_pipeline_waits_are_the_schedule_outside_its_stage_work() -> None:
    spans = [{"kind": "schedule", "depth": 0, "start": 0.0, "end": 10.0},
             {"kind": "forward", "depth": 1, "start": 2.0, "end": 4.0},
             {"kind": "bridge_wait", "depth": 2, "start": 2.0, "end": 3.0},
             {"kind": "backward", "depth": 1, "start": 4.0, "end": 7.0}]
    assert timeline.pipeline_waits(spans) == [(0.0, 2.0), (7.0, 10.0)]
