"""benchmarks/code_corpus.py: records cut at line boundaries within --record-chars, the same
corpus twice from the same arguments, a tokenizer with the data config's special tokens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from launcher import REPO

if str(REPO) not in sys.path:  # benchmarks/ is run from the repository root, not installed
    sys.path.insert(0, str(REPO))
from benchmarks.code_corpus import build, records_of, source_files  # noqa: E402


def test_records_are_cut_at_line_boundaries_within_the_limit():
    text = "a = 1\nbb = 2\n\n   \n" + "x" * 25 + "\nlast = 3"
    records = records_of(text, 10)
    assert records == ["a = 1\n", "bb = 2\n\n", "x" * 10, "x" * 10, "xxxxx\n", "last = 3"]
    # Nothing is lost but the whitespace-only piece.
    assert "".join(records) == text.replace("   \n", "")
    assert records_of("", 10) == [] and records_of("one line", 100) == ["one line"]


def test_the_corpus_is_deterministic_and_respects_record_chars(tmp_path: Path):
    kw = {"megabytes": 0.2, "vocab_size": 400, "record_chars": 300, "seed": 3}
    first, second = build(tmp_path / "a", **kw), build(tmp_path / "b", **kw)
    for name in ("train.jsonl", "val.jsonl", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert {k: v for k, v in first.items() if k != "paths"} == {k: v for k, v in second.items() if k != "paths"}
    train = [json.loads(line)["text"] for line in (tmp_path / "a/train.jsonl").read_text().splitlines()]
    val = [json.loads(line)["text"] for line in (tmp_path / "a/val.jsonl").read_text().splitlines()]
    assert len(train) == first["records"]["train"] > 10 * len(val) > 0
    assert all(0 < len(t) <= 300 and t.strip() for t in train + val)
    assert sum(t.endswith("\n") for t in train) > 0.9 * len(train)  # cut at line ends
    assert 0.2e6 <= first["source_bytes"] < 0.2e6 + 2e6 and first["vocab_size"] == 400
    # Another seed reads other files.
    assert build(tmp_path / "c", **{**kw, "seed": 4})["bytes"] != first["bytes"]


def test_the_tokenizer_has_the_data_configs_special_tokens(tmp_path: Path):
    from titan_mimo.data.tokenizer import TextTokenizer

    build(tmp_path, megabytes=0.1, vocab_size=300, record_chars=200)
    tok = TextTokenizer(str(tmp_path / "tokenizer.json"), image_token="<image>", pad_token="<pad>",
                        bos_token="<s>", eos_token="</s>", placeholder_id=1, pad_id=0, vocab_size=300,
                        placeholder_field="modules.vision.placeholder_id")
    assert (tok.pad_id, tok.image_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    code = "def f(x):\n    return x  # é\n"
    assert tok.tok.decode(tok.encode(code)) == code  # byte-level: indentation and any byte round-trip


def test_files_come_in_sorted_order():
    files = source_files(["torch"])
    assert [rel for rel, _ in files] == sorted(rel for rel, _ in files) and files[0][0].startswith("torch/")
