"""Record sources (titan_mimo/data/records.py) and image preprocessing (images.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from titan_mimo.data.images import ImagePolicy
from titan_mimo.data.records import (
    FileHandles,
    JsonlSource,
    RecordError,
    TarSource,
    open_source,
)


def _png(h: int, w: int, colour=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_jsonl_offsets_skip_blank_lines_and_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(8, 8))
    path = tmp_path / "d.jsonl"
    path.write_text('{"image": "a.png", "text": "one"}\n\n  \n{"text": "two"}\n{"text": "three", "images": []}')
    src = JsonlSource(str(path))
    assert len(src) == 3
    r0, r1, r2 = (src.record(i) for i in range(3))
    assert r0.fields["text"] == "one" and r0.images[0].path == str(tmp_path / "a.png")
    assert r1.where == f"{path}:4" and r1.images == ()
    assert r2.where == f"{path}:5" and r2.fields["text"] == "three"


def test_jsonl_with_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n{"text": "two"}\r\n')
    src = JsonlSource(str(path))
    assert [src.record(i).fields["text"] for i in range(len(src))] == ["one", "two"]


def test_jsonl_bad_json_is_a_record_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(RecordError, match=r"d.jsonl:2: invalid JSON"):
        JsonlSource(str(path)).record(1)


def test_tar_shards_group_members_by_key(tmp_path: Path) -> None:
    shard = tmp_path / "s-0.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [("k1.png", _png(8, 16)), ("k1.txt", b"a caption"),
                           ("sub/k2.1.png", _png(16, 8)), ("sub/k2.0.png", _png(8, 8)),
                           ("sub/k2.json", json.dumps({"conversations": [{"from": "human", "value": "hi"}]}).encode()),
                           ("k3.txt", b"text only")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    src = open_source(str(tmp_path / "s-*.tar"))
    assert isinstance(src, TarSource) and len(src) == 3
    k1, k2, k3 = (src.record(i) for i in range(3))
    assert k1.fields == {"text": "a caption"} and k1.where == f"{shard}:k1"
    assert k2.fields["conversations"][0]["value"] == "hi" and k3.images == ()
    policy, handles = ImagePolicy(cell=8), FileHandles()
    assert [policy.header_size(ref, handles) for ref in k1.images + k2.images] == [(8, 16), (8, 8), (16, 8)]


def test_parquet_rows_with_hf_image_structs(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "b.png").write_bytes(_png(16, 8))
    table = pa.table({"image": [{"bytes": _png(8, 24), "path": "x.png"}, {"bytes": None, "path": "b.png"}, None],
                      "text": ["first", "second", "third"]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    src = open_source(str(tmp_path / "d.parquet"))
    assert len(src) == 3
    policy, handles = ImagePolicy(cell=8), FileHandles()
    r0, r1, r2 = (src.record(i) for i in range(3))
    assert [policy.header_size(r.images[0], handles) for r in (r0, r1)] == [(8, 24), (16, 8)]
    assert r2.images == () and r2.fields == {"text": "third"}


def test_source_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="matches no files"):
        open_source(str(tmp_path / "none-*.tar"))
    with pytest.raises(ValueError, match="is not a file"):
        open_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"expected one \.jsonl or \.parquet file"):
        open_source(str(tmp_path / "x.csv"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no records"):
        open_source(str(tmp_path / "empty.jsonl"))


@pytest.mark.parametrize("stored, expected", [
    ((40, 24), (40, 24)),      # already multiples of 8 and 960 px within [256, 1024]: unchanged
    ((30, 50), (24, 40)),      # rounds to 32x48 = 1536 px > 1024: scaled by sqrt(1500/1024), floored
    ((5, 5), (16, 16)),        # 25 px < 256: scaled up to the minimum, ceiled
    ((1000, 500), (40, 16)),   # huge: area <= 1024, still taller than wide
])
def test_dynamic_resolution_sizes(stored, expected) -> None:
    policy = ImagePolicy(cell=8, min_pixels=256, max_pixels=1024)
    assert policy.target_size(*stored) == expected


def test_image_tokens_follow_size_patch_and_pixel_shuffle() -> None:
    # vit/debug: patch 4, pixel shuffle 2 -> one token per 8x8 cell
    policy = ImagePolicy(cell=8)
    assert [policy.tokens(s) for s in [(8, 8), (16, 16), (24, 40), (32, 16)]] == [1, 4, 15, 8]
    # a ViT-H/16 with pixel shuffle 2: 32-pixel cells, 1024x1024 -> 1024 tokens
    assert ImagePolicy(cell=32, max_pixels=1024 * 1024).tokens((1024, 1024)) == 1024
    assert ImagePolicy(cell=8, resize="fixed", fixed_size=(16, 24)).target_size(100, 7) == (16, 24)


def test_load_resizes_and_normalises(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(30, 50, colour=(255, 0, 128)))
    policy = ImagePolicy(cell=8, min_pixels=256, max_pixels=1024, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    from titan_mimo.data.records import ImageRef
    ref, handles = ImageRef(path=str(tmp_path / "a.png")), FileHandles()
    size = policy.target_size(*policy.header_size(ref, handles))
    x = policy.load(ref, handles, size)
    assert x.shape == (3, *size) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 5, 5], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]))


def test_exif_rotation_swaps_the_header_size(tmp_path: Path) -> None:
    im = Image.new("RGB", (24, 8), (0, 0, 255))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "r.jpg", exif=exif)
    from titan_mimo.data.records import ImageRef
    policy, ref, handles = ImagePolicy(cell=8, min_pixels=64), ImageRef(path=str(tmp_path / "r.jpg")), FileHandles()
    assert policy.header_size(ref, handles) == (24, 8)
    assert policy.load(ref, handles, (24, 8)).shape == (3, 24, 8)


def test_header_errors_are_record_errors(tmp_path: Path) -> None:
    from titan_mimo.data.records import ImageRef
    (tmp_path / "t.png").write_text("not a png")
    (tmp_path / "thin.png").write_bytes(_png(1, 64))
    policy, handles = ImagePolicy(cell=8), FileHandles()
    with pytest.raises(RecordError, match="cannot open image .*missing.png"):
        policy.header_size(ImageRef(path=str(tmp_path / "missing.png")), handles)
    with pytest.raises(RecordError, match="UnidentifiedImageError"):
        policy.header_size(ImageRef(path=str(tmp_path / "t.png")), handles)
    with pytest.raises(RecordError, match="more elongated than data.max_aspect_ratio = 20"):
        policy.header_size(ImageRef(path=str(tmp_path / "thin.png")), handles)
