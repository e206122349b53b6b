"""Real text for training runs on a machine without internet: the Python source files of installed
packages (torch's own tree, ~45 MB, is on every machine that trains), cut into text records, and a
BPE tokenizer trained on them, in the format `data.dataset = "local"` reads (docs/data.md).

    python -m benchmarks.code_corpus --out /tmp/corpus [--megabytes 40] [--vocab-size 32000] \\
        [--record-chars 4096] [--seed 0] [--packages torch] [--val-fraction 0.01]

Writes into --out:
    train.jsonl     {"text": ...} records, each at most --record-chars characters, cut at line
                    boundaries (a longer line is cut into pieces)
    val.jsonl       the same from held-out files (whole files: none of their text is in train.jsonl)
    tokenizer.json  byte-level BPE trained on train.jsonl's text, special tokens
                    <pad>=0 <image>=1 <s>=2 </s>=3 <unk>=4 (titan_mimo.data.make_sample's, so
                    data.pad_id and the data defaults hold as they are)

Deterministic: the packages' .py files in sorted order of their paths, shuffled by --seed, read
until --megabytes of source; the first files of that order, --val-fraction of the bytes, are held
out. The same packages (same versions) give the same files. Records that contain a special token's
text (say "<s>" in a docstring) are left out, so training reads them as plain text or not at all.

Used by `benchmarks/float8_convergence.py` (FP8 against bf16 losses on real text). With byte-level
BPE at 32k, Python source is ~4 characters a token: the default 40 MB is ~10M tokens in ~10k
records. Packed into 8192-token rows from 16 candidates each (`data.pack_max_records = 16`, rows
~96% full), 300 steps of 2 rows read ~9.6k records: one pass, no record seen twice.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from titan_mimo.data.make_sample import SPECIAL_TOKENS


def package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"--packages: {name!r} is not an installed package")
    return Path(next(iter(spec.submodule_search_locations)))


def source_files(packages: list[str]) -> list[tuple[str, Path]]:
    """(path relative to the package's parent, file) of every .py file, in sorted order."""
    files = []
    for name in packages:
        root = package_root(name)
        files += [(str(p.relative_to(root.parent)), p) for p in root.rglob("*.py") if p.is_file()]
    return sorted(files)


def records_of(text: str, limit: int) -> list[str]:
    """`text` cut at line boundaries into pieces of at most `limit` characters (a longer line is
    cut into `limit`-character pieces); pieces of only whitespace are dropped."""
    out, current = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if current:
                out.append(current)
                current = ""
            out.append(line[:limit])
            line = line[limit:]
        if len(current) + len(line) > limit:
            out.append(current)
            current = ""
        current += line
    out.append(current)
    return [r for r in out if r.strip()]


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2's pre-tokenizer: spaces and indentation are tokens, every byte is in
    the alphabet, so <unk> never occurs), with make_sample's special tokens first."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def write_jsonl(path: Path, texts: list[str]) -> int:
    """Writes {"text": ...} lines; returns the bytes written."""
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    path.write_bytes(data)
    return len(data)


def build(out: Path, megabytes: float = 40, vocab_size: int = 32000, record_chars: int = 4096, seed: int = 0,
          packages: tuple[str, ...] = ("torch",), val_fraction: float = 0.01) -> dict:
    """Writes the corpus; returns what it wrote (paths, bytes, records, vocabulary)."""
    if record_chars < 1 or megabytes <= 0 or not 0 < val_fraction < 1:
        raise ValueError(f"record_chars = {record_chars}, megabytes = {megabytes} and val_fraction = "
                         f"{val_fraction} need record_chars >= 1, megabytes > 0, 0 < val_fraction < 1")
    files = source_files(list(packages))
    random.Random(seed).shuffle(files)
    budget, val_budget = megabytes * 1e6, val_fraction * megabytes * 1e6
    train, val, read, val_read = [], [], 0, 0
    for _, path in files:
        if read >= budget:
            break
        text = path.read_bytes().decode("utf-8", errors="replace")
        size = len(text.encode())
        pieces = records_of(text, record_chars)
        if val_read < val_budget:
            val += pieces
            val_read += size
        else:
            train += pieces
        read += size
    if not train:
        raise ValueError(f"--megabytes {megabytes}: all of it held out for validation; ask for more")
    kept = {name: [t for t in texts if not any(s in t for s in SPECIAL_TOKENS)] for name, texts in
            (("train", train), ("val", val))}
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.jsonl", "val": out / "val.jsonl", "tokenizer": out / "tokenizer.json"}
    written = {name: write_jsonl(paths[name], texts) for name, texts in kept.items()}
    tok = train_tokenizer(kept["train"], vocab_size)
    tok.save(str(paths["tokenizer"]))
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS))), \
        [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    return {"paths": {k: str(v) for k, v in paths.items()}, "packages": list(packages), "seed": seed,
            "source_bytes": read, "is_short": read < budget,
            "bytes": written, "records": {k: len(v) for k, v in kept.items()},
            "left_out": {k: len(v) - len(kept[k]) for k, v in (("train", train), ("val", val))},
            "record_chars": record_chars, "vocab_size": tok.get_vocab_size()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.code_corpus", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--megabytes", type=float, default=40, help="source text to read (train and val)")
    p.add_argument("--vocab-size", type=int, default=32000, help="tokenizer vocabulary (<= the LM's)")
    p.add_argument("--record-chars", type=int, default=4096, help="longest record, in characters")
    p.add_argument("--seed", type=int, default=0, help="order of the files")
    p.add_argument("--packages", default="torch", help="comma-separated packages whose .py files to read")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of the bytes held out")
    a = p.parse_args(argv)
    start = time.perf_counter()
    got = build(a.out, a.megabytes, a.vocab_size, a.record_chars, a.seed, tuple(a.packages.split(",")),
                a.val_fraction)
    for name in ("train", "val"):
        print(f"{got['paths'][name]}: {got['records'][name]} records, {got['bytes'][name] / 1e6:.1f} MB "
              f"({got['left_out'][name]} left out: a special token in the text)")
    print(f"{got['paths']['tokenizer']}: byte-level BPE, vocabulary {got['vocab_size']}")
    short = f" (all there is: fewer than the {a.megabytes:g} MB asked for)" if got["is_short"] else ""
    print(f"from {got['source_bytes'] / 1e6:.1f} MB of .py files of {', '.join(got['packages'])}{short} "
          f"(seed {a.seed}) in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
