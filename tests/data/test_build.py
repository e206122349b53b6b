"""Local data from the config (titan_mimo/data/build.py via train.prepare): errors name the field
and the fix before any process group; and one end-to-end run of the README's real-data command."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from titan_mimo.train import prepare

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "train_configs/debug_real_cpu.toml"


def _args(folder: Path, *overrides: str) -> list[str]:
    return ["--config", str(CONFIG),
            f"--data.sources=['{folder}/captions.jsonl', '{folder}/shards/chat-*.tar']",
            f"--data.validation_sources=['{folder}/val.jsonl']",
            f"--data.tokenizer={folder}/tokenizer.json", *overrides]


def test_the_config_builds_a_local_dataset(sample_dir: Path) -> None:
    setup = prepare(_args(sample_dir))
    ds = setup.dataset
    assert ds.tokenizer.image_id == 1 and ds.tokenizer.pad_id == 0 and ds.policy.cell == 8
    assert [len(s) for s in ds.sources["train"]] == [48 + 3, 48] and len(ds.sources["validation"][0]) == 8
    s = ds.sample(0)
    assert s.tokens.shape == (64,) and len(s.images["vision"]) == 1


@pytest.mark.parametrize("overrides, message", [
    (["--modules.vision.placeholder_id=5"],
     (r"modules.vision.placeholder_id = 5 but .*tokenizer.json maps data.image_token '<image>' to 1; "
      r"set modules.vision.placeholder_id = 1")),
    (["--data.pad_token=<nope>"], r"data.pad_token = '<nope>' is not a token of .*tokenizer.json"),
    (["--data.pad_id=4", "--data.pad_token=<unk>"], None),  # consistent: accepted
    (["--data.tokenizer=/nonexistent/tokenizer.json"],
     r"data.tokenizer = '/nonexistent/tokenizer.json': no such file"),
    (["--data.sources=['/nonexistent/a.jsonl']", "--data.weights=[]"], r"data source '/nonexistent/a.jsonl': .* is not a file"),
    (["--data.sources=[]"], r'data: dataset = "local" needs sources'),
    (["--data.weights=[1.0]"], r"data: weights has 1 entries for 2 sources"),
    (["--data.validation_sources=[]"], r"validation.enable = true needs data.validation_sources"),
    (["--data.resize=fixed", "--data.fixed_size=[12, 16]"], r"data.fixed_size = \[12, 16\] is not a multiple of 8"),
    (["--data.max_pixels=32", "--data.min_pixels=16"], r"data.max_pixels = 32 is below one 8x8 cell"),
    (["--modules.language.model=hybrid_lm/debug", "--data.image_mean=[0.5]"],
     r"data.image_mean / data.image_std need 3 values"),
])
def test_config_errors_name_the_field(sample_dir: Path, overrides: list[str], message: str | None) -> None:
    if message is None:
        prepare(_args(sample_dir, *overrides))
        return
    with pytest.raises(ValueError, match=message):
        prepare(_args(sample_dir, *overrides))


def test_local_data_feeds_at_most_one_encoder(sample_dir: Path) -> None:
    two = REPO / "train_configs/debug_two_encoders_cpu.toml"
    args = _args(sample_dir, "--data.dataset=local", "--validation.enable=false")
    args[1] = str(two)
    with pytest.raises(ValueError, match=r'data.dataset = "local" feeds at most one image encoder; the config has 2'):
        prepare(args)


def test_a_language_model_alone_builds_a_text_dataset(sample_dir: Path, tmp_path: Path) -> None:
    """attn_1b_1gpu.toml (no encoder) at debug size on local text records: no image policy, no
    placeholder check, samples without images."""
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "a red circle on blue"}) + "\n")
    setup = prepare(["--config", str(REPO / "train_configs/attn_1b_1gpu.toml"),
                     "--modules.language.model=hybrid_lm/debug", "--training.seq_len=64", "--data.dataset=local",
                     f"--data.sources=['{tmp_path}/text.jsonl']", f"--data.tokenizer={sample_dir}/tokenizer.json",
                     "--data.pack=true"])
    ds = setup.dataset
    assert ds.encoder is None and ds.policy is None and ds.tokenizer.pad_id == 0
    batch = ds.batch([0, 1])
    assert batch.tokens.shape == (2, 64) and batch.images == {}


def test_mock_rejects_local_only_options() -> None:
    with pytest.raises(ValueError, match='balance_patches and pack apply to dataset = "local" only'):
        prepare(["--config", str(REPO / "train_configs/debug_cpu.toml"), "--data.pack=true"])


def test_real_data_trains_and_resumes_exactly(sample_dir: Path, tmp_path: Path) -> None:
    """The README command on the tiny dataset, 4 ranks (vision dp 2 | language dp 2), worker
    loaders, patch balancing, validation: the loss falls and the metrics carry the data counters.
    Then a second run resumes from the first one's step-4 checkpoint (its DCP state holds every
    rank's loader state): steps 5-8 repeat bit for bit, skip counters included. A third run,
    colocated (both modules on all 4 ranks, language dp 4, one micro-batch a step, patches
    balanced over 4 instead of 2), gives the same losses to round-off: same samples per step."""
    common = ["--training.steps=8", "--metrics.log_freq=1", "--validation.freq=8",
              "--checkpoint.enable=true", "--checkpoint.interval=4", "--metrics.enable_tensorboard=false"]
    straight, resumed, colocated = tmp_path / "straight", tmp_path / "resumed", tmp_path / "colocated"
    step4 = Path("checkpoint") / "step-4"
    cases = [{"argv": _args(sample_dir, *common, f"--job.dump_folder={straight}"), "copy": None, "export": None},
             {"argv": _args(sample_dir, *common, f"--job.dump_folder={resumed}"),
              "copy": [str(straight / step4), str(resumed / step4)], "export": None},
             {"argv": _args(sample_dir, *common, "--checkpoint.enable=false",
                            "--validation.enable=false", "--parallelism.colocated=true",
                            f"--job.dump_folder={colocated}"), "copy": None, "export": None}]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    sys.path.insert(0, str(REPO / "tests"))
    from launcher import torchrun
    torchrun(4, REPO / "tests/workers/checkpoint_worker.py", str(tmp_path / "cases.json"), timeout=300)

    records = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    losses = [r["loss"] for r in records]
    assert all(math.isfinite(x) for x in losses)
    assert records[0]["loss"] > 4.0  # about ln(vocab) at the start
    assert sum(losses[-3:]) / 3 < losses[0] - 0.8, losses  # 5.6 -> ~4.5 in 8 short-schedule steps
    for r in records:
        assert r["skipped_samples"] >= 0 and r["blank_images"] == 0
        assert 1.0 <= r["patch_imbalance/vision"] < 2.0
    assert [r["skipped_samples"] for r in records] == sorted(r["skipped_samples"] for r in records)
    assert math.isfinite(records[-1]["val_loss"])
    again = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [5, 6, 7, 8]
    for a, b in zip(again, records[4:]):
        assert (a["loss"], a["grad_norm"], a["skipped_samples"]) == (b["loss"], b["grad_norm"], b["skipped_samples"])
    other = [json.loads(x) for x in (colocated / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in other] == list(range(1, 9))
    assert [r["loss_tokens"] for r in other] == [r["loss_tokens"] for r in records]
    for a, b in zip(other, records):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["loss"], b["loss"])
