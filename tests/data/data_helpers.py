"""Helpers for the data tests: datasets over a folder built by `make_sample.build`."""

from __future__ import annotations

import json
from pathlib import Path

from titan_mimo.data.dataset import ImageTextDataset
from titan_mimo.data.images import ImagePolicy
from titan_mimo.data.tokenizer import TextTokenizer

CELL = 8  # vit/debug: patch_size 4 * pixel_shuffle 2


def tokenizer(folder: Path, **kw) -> TextTokenizer:
    args = {"image_token": "<image>", "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
            "placeholder_id": 1, "pad_id": 0, "vocab_size": 256,
            "placeholder_field": "modules.vision.placeholder_id"}
    return TextTokenizer(str(folder / "tokenizer.json"), **{**args, **kw})


def dataset(folder: Path, sources: list[str], *, seq_len: int = 64, seed: int = 0, weights=(),
            min_pixels: int = 256, max_pixels: int = 1024, tokenizer_dir: Path | None = None,
            encoder: str | None = "vision", placeholder_id: int | None = 1, **kw) -> ImageTextDataset:
    """Sources relative to `folder`; the tokenizer from tokenizer_dir (default: folder). No
    encoder: `encoder=None, policy=None, placeholder_id=None` (text records)."""
    policy = kw.pop("policy", ImagePolicy(cell=CELL, min_pixels=min_pixels, max_pixels=max_pixels))
    return ImageTextDataset(sources={"train": [str(folder / s) for s in sources]},
                            weights={"train": list(weights)},
                            tokenizer=tokenizer(tokenizer_dir or folder, placeholder_id=placeholder_id),
                            policy=policy, encoder=encoder, seq_len=seq_len, seed=seed, **kw)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
