"""The rank-0 metrics writer and the allocator-retry count (CPU; CUDA's count stubbed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from titan_mimo.metrics import MetricsWriter, alloc_retries


def _record(step: int, retries: dict[str, int]) -> dict:
    return {"step": step, "loss": 2.0, "grad_norm": 1.0, "lr": 1e-4, "tokens_per_s": 100.0,
            "modules": {name: {"mfu": 0.4, "memory_gib": 69.0, "tflops_per_device": 400.0,
                               "alloc_retries": n} for name, n in retries.items()}}


def test_alloc_retries_reads_the_cuda_allocator_count(monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(torch.cuda, "memory_stats",
                        lambda device: asked.append(device) or {"num_alloc_retries": 7})
    assert alloc_retries(torch.device("cuda", 0)) == 7
    assert asked == [torch.device("cuda", 0)]
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device: {})  # a fresh allocator
    assert alloc_retries(torch.device("cuda", 0)) == 0
    assert alloc_retries(torch.device("cpu")) == 0


def test_writer_warns_when_a_module_retries_allocations(tmp_path: Path, capsys) -> None:
    writer = MetricsWriter(tmp_path, enable_tensorboard=True)
    writer.log(_record(1, {"vision": 0, "language": 0}))
    out = capsys.readouterr()
    assert "retries" not in out.out and out.err == ""
    writer.log(_record(2, {"vision": 3, "language": 0}))
    out = capsys.readouterr()
    assert "vision: mfu 40.0% mem 69.00GiB retries 3 | language: mfu 40.0% mem 69.00GiB" in out.out
    assert out.err.count("titan_mimo: step 2: vision: the CUDA caching allocator has retried 3") == 1
    assert "checkpoint more activations" in out.err
    writer.log(_record(3, {"vision": 3, "language": 0}))  # no new retries: the line only
    out = capsys.readouterr()
    assert "retries 3" in out.out and out.err == ""
    writer.log(_record(4, {"vision": 5, "language": 1}))
    out = capsys.readouterr()
    assert "step 4: vision: the CUDA caching allocator has retried 5" in out.err
    assert "step 4: language: the CUDA caching allocator has retried 1" in out.err
    writer.close()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["modules"]["vision"]["alloc_retries"] for r in records] == [0, 3, 3, 5]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.value for e in events.Scalars("modules/vision/alloc_retries")] == pytest.approx([0, 3, 3, 5])


def test_mfu_without_a_known_peak_is_null_and_printed_as_na(tmp_path: Path, capsys) -> None:
    writer = MetricsWriter(tmp_path, enable_tensorboard=False)
    record = _record(1, {"vision": 0, "language": 0})
    record["modules"]["vision"]["mfu"] = None
    writer.log(record)
    writer.close()
    assert "vision: mfu n/a mem 69.00GiB | language: mfu 40.0% mem 69.00GiB" in capsys.readouterr().out
    logged = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert logged["modules"]["vision"]["mfu"] is None and logged["modules"]["language"]["mfu"] == 0.4
