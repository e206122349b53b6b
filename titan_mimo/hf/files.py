"""safetensors folders as transformers reads and writes them: one `model.safetensors`, or shards
listed by `model.safetensors.index.json`. Reading takes any box of a tensor through
`safe_open(...).get_slice`, so a rank reads only the rows of its own shard; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .names import Source

__all__ = ["Folder", "has_weights", "write_folder"]

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def has_weights(path: Path) -> bool:
    """Whether a folder holds safetensors (a config.json alone describes a shape only)."""
    return (Path(path) / SINGLE).is_file() or (Path(path) / INDEX).is_file()


class Folder:
    """The tensors of a transformers folder, by name, read lazily."""

    def __init__(self, path: Path):
        self.path = Path(path)
        index = self.path / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise ValueError(f"{index} is not a safetensors index ({e})") from None
            self.file_of = {name: self.path / file for name, file in weight_map.items()}
        elif (self.path / SINGLE).is_file():
            with safe_open(str(self.path / SINGLE), framework="pt") as f:
                self.file_of = {name: self.path / SINGLE for name in f.keys()}
        else:
            raise ValueError(f"{self.path} has neither {SINGLE} nor {INDEX}")
        for file in set(self.file_of.values()):
            if not file.is_file():
                raise ValueError(f"{index} lists {file.name}, which does not exist")
        self._open: dict[Path, object] = {}

    @property
    def names(self) -> set[str]:
        return set(self.file_of)

    def _slice(self, name: str):
        if name not in self.file_of:
            raise ValueError(f"{self.path}: no tensor '{name}'")
        file = self.file_of[name]
        if file not in self._open:
            self._open[file] = safe_open(str(file), framework="pt")
        return self._open[file].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        return SAFETENSORS_DTYPES[self._slice(name).get_dtype()]

    def read(self, name: str) -> torch.Tensor:
        return self._slice(name)[:]

    def check(self, fqn: str, src: Source, shape: tuple[int, ...]) -> None:
        """ValueError naming the file and tensor unless `src` can give our `shape`."""
        where = f"{self.file_of.get(src.names[0], self.path)}"
        if src.stacked:
            if len(src.names) != shape[0]:
                raise ValueError(f"{where}: '{fqn}' has {shape[0]} experts, the folder {len(src.names)}")
            expected = [(n, shape[1:]) for n in src.names]
        elif src.rows is not None:
            file_shape = self.shape(src.names[0])
            if src.rows[1] > file_shape[0] or file_shape[1:] != shape[1:] or src.rows[1] - src.rows[0] != shape[0]:
                raise ValueError(f"{where}: '{src.names[0]}' has shape {file_shape}; '{fqn}' {shape} needs rows "
                                 f"{src.rows[0]}..{src.rows[1]} of it")
            return
        else:
            expected = [(src.names[0], src.file_shape or shape)]
        for name, want in expected:
            if self.shape(name) != tuple(want):
                raise ValueError(f"{self.file_of[name]}: '{name}' has shape {self.shape(name)}, '{fqn}' needs "
                                 f"{tuple(want)}")

    def read_local(self, src: Source, shape: tuple[int, ...], index: list[torch.Tensor | None]) -> torch.Tensor:
        """Our tensor (full `shape`), restricted to `index[d]` (global indices, None = all) on each
        dim d, reading only the covering range of each dim from the file."""
        spans, picks = [], []
        for d, size in enumerate(shape):
            idx = index[d]
            if idx is None or idx.numel() == 0:
                lo, hi = (0, size) if idx is None else (0, 0)
                spans.append((lo, hi))
                picks.append(None)
                continue
            lo, hi = int(idx.min()), int(idx.max()) + 1
            spans.append((lo, hi))
            contiguous = idx.numel() == hi - lo and bool((idx == torch.arange(lo, hi, device=idx.device)).all())
            picks.append(None if contiguous else (idx - lo).cpu())
        boxes = tuple(slice(lo, hi) for lo, hi in spans)
        if src.stacked:
            parts = [self._slice(src.names[e])[boxes[1:]] for e in range(*spans[0])]
            t = torch.stack(parts) if parts else torch.empty(0, *[hi - lo for lo, hi in spans[1:]])
        elif src.rows is not None:
            start = src.rows[0]
            t = self._slice(src.names[0])[(slice(start + spans[0][0], start + spans[0][1]),) + boxes[1:]]
        elif src.file_shape is not None:
            t = self.read(src.names[0]).reshape(shape)[boxes]
        else:
            t = self._slice(src.names[0])[boxes] if shape else self.read(src.names[0])
        for d, pick in enumerate(picks):
            if pick is not None:
                t = t.index_select(d, pick)
        return t


def _own(t: torch.Tensor) -> torch.Tensor:
    """`t` in storage of its own: safetensors refuses tensors that share memory (an expert
    unbound from our stacked tensor, a row slice of a view)."""
    t = t.contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def write_folder(out: Path, tensors: dict[str, torch.Tensor], config: dict, max_shard_bytes: int) -> list[Path]:
    """config.json plus the tensors: one model.safetensors, or shards of at most `max_shard_bytes`
    (a tensor larger than that gets a shard of its own) with model.safetensors.index.json, as
    transformers' save_pretrained writes them. Returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        n = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    for stale in [out / SINGLE, out / INDEX, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file({k: _own(tensors[k]) for k in shards[0]}, str(out / SINGLE), metadata=metadata)
        return [out / "config.json", out / SINGLE]
    files, weight_map = [out / "config.json"], {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: _own(tensors[k]) for k in names}, str(out / file), metadata=metadata)
        weight_map.update({k: file for k in names})
        files.append(out / file)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return files + [out / INDEX]
