"""benchmarks/float8_convergence.py on CPU (float8 emulated): the debug language model alone
(attn_1b_1gpu.toml's layout at debug size) on a tiny code corpus, packed, with validation; both
runs in parallel, then the losses in convergence.json and table.md against the runs' own
metrics.jsonl; a failed run is named with the end of its log."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import REPO

if str(REPO) not in sys.path:  # benchmarks/ is run from the repository root, not installed
    sys.path.insert(0, str(REPO))
from benchmarks import float8_convergence  # noqa: E402
from benchmarks.code_corpus import build  # noqa: E402

pytest.importorskip("torchao.float8")

# The debug LM alone; byte-level BPE needs 256 bytes + 5 special tokens, so a vocabulary of 512.
DEBUG_LM = ["--modules.language.model=hybrid_lm/debug", "--modules.language.model_args.vocab_size=512",
            "--modules.language.compile=false", "--modules.language.model_args.ssd_backend=torch",
            "--training.seq_len=256", "--metrics.enable_tensorboard=false", "--data.num_workers=0"]


def _convergence(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.float8_convergence", "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_bf16_and_fp8_runs_on_a_code_corpus_and_their_losses_compared(tmp_path: Path):
    corpus = tmp_path / "corpus"
    build(corpus, megabytes=0.3, vocab_size=512, record_chars=300)
    local = ["--data.dataset=local", f"--data.sources=['{corpus}/train.jsonl']",
             f"--data.validation_sources=['{corpus}/val.jsonl']", f"--data.tokenizer={corpus}/tokenizer.json",
             "--data.pack=true", "--validation.enable=true", "--validation.freq=3"]
    out = tmp_path / "conv"
    proc = _convergence(out, "--config", "train_configs/attn_1b_1gpu.toml", "--recipe", "rowwise", "--filter", "all",
                        "--steps", "6", "--every", "2", "--tail", "3", "--parallel", "--", *DEBUG_LM, *local)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "convergence.json").read_text())
    summary = result["summary"]
    for name in ("bf16", "fp8"):
        records = _metrics(out / name)
        assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
        losses = [r["loss"] for r in records]
        assert result["runs"][name]["losses"] == losses and all(math.isfinite(x) for x in losses)
        assert [summary["at_steps"][str(s)][name] for s in (1, 2, 4, 6)] == [losses[s - 1] for s in (1, 2, 4, 6)]
        assert summary["tail_mean"][name] == sum(losses[-3:]) / 3
        assert {s: v[name] for s, v in summary["val_loss"].items()} == \
            {str(r["step"]): r["val_loss"] for r in records if "val_loss" in r} and len(summary["val_loss"]) == 2
        # Packed real text: rows mostly full, no record skipped (none is longer than a row).
        assert all(r["loss_tokens"] > 0.8 * 2 * 256 and r["skipped_samples"] == 0 for r in records)
    bf16, fp8 = summary["tail_mean"]["bf16"], summary["tail_mean"]["fp8"]
    assert summary["relative_difference_pct"] == pytest.approx(100 * (fp8 - bf16) / bf16, rel=1e-12)
    # The fp8 run did convert (its losses differ) and stays near bf16 on a few steps.
    assert result["runs"]["fp8"]["losses"] != result["runs"]["bf16"]["losses"]
    assert abs(summary["relative_difference_pct"]) < 1.0 and summary["is_finite"]
    assert "--modules.language.float8=rowwise" in result["runs"]["fp8"]["argv"]
    assert "--modules.language.float8=none" in result["runs"]["bf16"]["argv"]
    table = (out / "table.md").read_text()
    assert f"| mean of steps 4–6 | {bf16:.4f} | {fp8:.4f} | **{summary['relative_difference_pct']:+.2f}%** |" in table
    assert "| 3 (validation) |" in table and table.count("\n| ") == 1 + 4 + 2 + 1  # header, steps, validations, mean


def test_a_failed_run_is_named_with_its_log(tmp_path: Path):
    proc = _convergence(tmp_path, "--config", "train_configs/attn_1b_1gpu.toml", "--steps", "2", "--parallel",
                        "--", "--training.seq_len=-1")
    assert proc.returncode == 1
    for name in ("bf16", "fp8"):
        assert f"the {name} run failed (exit 2)" in proc.stderr and "seq_len" in proc.stderr
    assert not (tmp_path / "convergence.json").exists()


def test_options_the_program_sets_are_refused():
    with pytest.raises(SystemExit):
        float8_convergence.main(["--config", "x.toml", "--out", "/nonexistent", "--", "--training.steps=3"])
    with pytest.raises(SystemExit):
        float8_convergence.main(["--config", "x.toml", "--out", "/nonexistent", "--module", "vision,language",
                                 "--", "--modules.vision.float8=tensorwise"])
    assert float8_convergence.float8_args(["vision", "language"], "tensorwise", "auto") == {
        "bf16": ["--modules.vision.float8=none", "--modules.language.float8=none"],
        "fp8": ["--modules.vision.float8=tensorwise", "--modules.vision.float8_filter=auto",
                "--modules.language.float8=tensorwise", "--modules.language.float8_filter=auto"]}
    assert float8_convergence.shown_steps(300, 50) == [1, 50, 100, 150, 200, 250, 300]
    assert float8_convergence.shown_steps(7, 5) == [1, 5, 7]
