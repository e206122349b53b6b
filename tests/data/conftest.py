"""A tiny local dataset built once per session (generated PNGs, captions, conversations, tar
shards, a BPE tokenizer trained here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from titan_mimo.data.make_sample import build


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample_data")
    build(out, n=48, n_val=8, seed=0)
    return out
