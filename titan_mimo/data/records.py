"""On-disk record sources: random access to raw records of JSONL files, WebDataset-style tar
shards and (when pyarrow is installed) Parquet files. See docs/data.md for the format.

A record is a plain dict with either `text` (a caption: loss on every text token) or
`conversations` (a list of turns, loss on assistant turns only), and optionally its images:
`image` (one) or `images` (a list). Images are referenced, not decoded, here: an `ImageRef`
opens the bytes when a role needs them, so a language rank never reads more than an image
header. Every record knows where it came from (`where`) for error messages.

Sources index their records once at start-up (line offsets, tar member offsets, Parquet row
groups) and open file handles lazily per process, so data-loader worker processes each get their
own handles.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class RecordError(ValueError):
    """A record that cannot be used; the dataset skips it and counts it."""


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes are: a file path, an (offset, size) span of a tar shard, or bytes."""

    path: str = ""
    offset: int = -1
    size: int = -1
    data: bytes | None = None

    def open(self, handles: FileHandles) -> io.BufferedIOBase:
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.offset >= 0:
            f = handles.get(self.path)
            f.seek(self.offset)
            return io.BytesIO(f.read(self.size))
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise RecordError(f"cannot open image {self.path}: {e.strerror}") from None

    def describe(self) -> str:
        return self.path if self.offset < 0 else f"{self.path}@{self.offset}"


@dataclass(frozen=True)
class RawRecord:
    fields: dict
    """The record's JSON fields (text or conversations, and anything else the user stored)."""
    images: tuple[ImageRef, ...]
    where: str
    """file:line, shard:key or file:row, for messages."""


class FileHandles:
    """File handles opened lazily, per process (a forked worker must not share a parent's
    file offset)."""

    def __init__(self) -> None:
        self.pid, self.files = os.getpid(), {}

    def get(self, path: str):
        if self.pid != os.getpid():
            self.pid, self.files = os.getpid(), {}
        if path not in self.files:
            self.files[path] = open(path, "rb")  # noqa: SIM115 (kept open for random reads)
        return self.files[path]

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def _image_refs(fields: dict, base: Path, where: str) -> tuple[ImageRef, ...]:
    if "image" in fields and "images" in fields:
        raise RecordError(f"{where}: has both 'image' and 'images'; use one")
    refs = fields.get("images", [fields["image"]] if "image" in fields else [])
    if not isinstance(refs, list):
        raise RecordError(f"{where}: 'images' must be a list, got {type(refs).__name__}")
    out = []
    for ref in refs:
        if isinstance(ref, dict):  # Hugging Face `datasets` Image feature: {bytes, path}
            if ref.get("bytes"):
                out.append(ImageRef(path=str(ref.get("path") or where), data=bytes(ref["bytes"])))
                continue
            ref = ref.get("path")
        if isinstance(ref, (bytes, bytearray)):
            out.append(ImageRef(path=where, data=bytes(ref)))
        elif isinstance(ref, str) and ref:
            out.append(ImageRef(path=str(base / ref)))
        else:
            raise RecordError(f"{where}: image reference {ref!r} is not a path or bytes")
    return tuple(out)


class JsonlSource:
    """One JSON object per line; image paths are relative to the file's folder."""

    def __init__(self, path: str) -> None:
        self.path, self.base = path, Path(path).parent
        size = os.path.getsize(path)
        data = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        chunk = 1 << 26  # scan in 64 MiB pieces: the file is never held in memory at once
        ends = np.concatenate([np.flatnonzero(data[o: o + chunk] == ord("\n")) + o
                               for o in range(0, size, chunk)] or [np.zeros(0, np.int64)]).astype(np.int64)
        if size and data[-1] != ord("\n"):
            ends = np.append(ends, size)
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if len(ends) else ends
        if size >= 3 and bytes(data[:3]) == b"\xef\xbb\xbf":  # a UTF-8 byte-order mark
            starts[0] = 3
        # Drop whitespace-only lines; only short lines can be, so only those are looked at.
        short = np.flatnonzero(ends - starts <= 16)
        blank = [i for i in short if not bytes(data[starts[i]: ends[i]]).strip()]
        keep = np.setdiff1d(np.arange(len(ends)), np.asarray(blank, dtype=np.int64))
        self.starts, self.ends = starts[keep], ends[keep]
        self.line_numbers = keep + 1
        del data
        self._handles = FileHandles()

    def __len__(self) -> int:
        return len(self.starts)

    def record(self, i: int) -> RawRecord:
        where = f"{self.path}:{int(self.line_numbers[i])}"
        f = self._handles.get(self.path)
        f.seek(int(self.starts[i]))
        line = f.read(int(self.ends[i] - self.starts[i]))
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: invalid JSON: {e}") from None
        if not isinstance(fields, dict):
            raise RecordError(f"{where}: a record must be a JSON object")
        return RawRecord(fields=fields, images=_image_refs(fields, self.base, where), where=where)


class TarSource:
    """WebDataset-style shards: members sharing a key (the name up to the first dot after the
    last slash) form one record: `key.txt` (a caption) or `key.json` (a record dict), and
    images `key.png`, `key.1.jpg`, ... (in name order). Members are indexed by their data
    offsets once, then read by seeking; nothing is extracted to disk."""

    def __init__(self, paths: list[str]) -> None:
        self.keys: list[tuple[str, str, dict[str, tuple[int, int]]]] = []
        for path in paths:
            groups: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(path, "r:") as tar:
                    for m in tar:
                        if not m.isfile():
                            continue
                        folder, _, name = m.name.rpartition("/")
                        stem, dot, ext = name.partition(".")
                        if not dot:
                            continue
                        key = f"{folder}/{stem}" if folder else stem
                        groups.setdefault(key, {})[ext.lower()] = (m.offset_data, m.size)
            except tarfile.TarError as e:
                raise ValueError(f"{path}: not a readable uncompressed tar shard: {e}") from None
            self.keys.extend((path, key, members) for key, members in groups.items())
        self._handles = FileHandles()

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, path: str, span: tuple[int, int]) -> bytes:
        f = self._handles.get(path)
        f.seek(span[0])
        return f.read(span[1])

    def record(self, i: int) -> RawRecord:
        path, key, members = self.keys[i]
        where = f"{path}:{key}"
        if "json" in members:
            try:
                fields = json.loads(self._read(path, members["json"]))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RecordError(f"{where}.json: invalid JSON: {e}") from None
            if not isinstance(fields, dict):
                raise RecordError(f"{where}.json: a record must be a JSON object")
        elif "txt" in members:
            try:
                fields = {"text": self._read(path, members["txt"]).decode("utf-8")}
            except UnicodeDecodeError as e:
                raise RecordError(f"{where}.txt: not UTF-8: {e}") from None
        else:
            raise RecordError(f"{where}: no .txt or .json member")
        images = tuple(ImageRef(path=path, offset=off, size=size)
                       for ext, (off, size) in sorted(members.items())
                       if "." + ext.rpartition(".")[2] in IMAGE_EXTENSIONS)
        return RawRecord(fields=fields, images=images, where=where)


class ParquetSource:
    """Parquet rows with the record's fields as columns (`text` or `conversations`, `image` or
    `images` as paths relative to the file, raw bytes, or {bytes, path} structs as Hugging Face
    `datasets` writes them). Needs pyarrow, which is optional."""

    def __init__(self, path: str) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), "
                             "or convert the data to JSONL") from None
        self.path, self.base = path, Path(path).parent
        meta = pq.ParquetFile(path).metadata
        self.row_ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self._pid, self._file, self._cached = None, None, (-1, None)

    def __len__(self) -> int:
        return int(self.row_ends[-1]) if len(self.row_ends) else 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pid": None, "_file": None, "_cached": (-1, None)}

    def record(self, i: int) -> RawRecord:
        import pyarrow.parquet as pq
        if self._pid != os.getpid():
            self._pid, self._file, self._cached = os.getpid(), pq.ParquetFile(self.path), (-1, None)
        group = int(np.searchsorted(self.row_ends, i, side="right"))
        if self._cached[0] != group:  # rows are read a row group at a time
            self._cached = (group, self._file.read_row_group(group).to_pylist())
        first = int(self.row_ends[group - 1]) if group else 0
        fields = self._cached[1][i - first]
        where = f"{self.path}:row {i}"
        if isinstance(fields.get("conversations"), str):
            try:
                fields = {**fields, "conversations": json.loads(fields["conversations"])}
            except json.JSONDecodeError as e:
                raise RecordError(f"{where}: 'conversations' is not valid JSON: {e}") from None
        fields = {k: v for k, v in fields.items() if v is not None}
        return RawRecord(fields=fields, images=_image_refs(fields, self.base, where), where=where)


def open_source(spec: str) -> JsonlSource | TarSource | ParquetSource:
    """A source from a config entry: a .jsonl file, a .parquet file, or a .tar shard / glob of
    shards (`shards/train-*.tar`), which together form one dataset."""
    paths = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
    if not paths:
        raise ValueError(f"data source {spec!r}: the pattern matches no files")
    for p in paths:
        if not os.path.isfile(p):
            raise ValueError(f"data source {spec!r}: {p} is not a file")
    kinds = {Path(p).suffix.lower() for p in paths}
    if kinds == {".tar"}:
        source = TarSource(paths)
    elif len(paths) == 1 and kinds <= {".jsonl", ".json"}:
        source = JsonlSource(paths[0])
    elif len(paths) == 1 and kinds == {".parquet"}:
        source = ParquetSource(paths[0])
    else:
        raise ValueError(f"data source {spec!r}: expected one .jsonl or .parquet file, or .tar "
                         f"shards (a glob pattern for several), got {', '.join(paths[:3])}")
    if len(source) == 0:
        raise ValueError(f"data source {spec!r} holds no records")
    return source
