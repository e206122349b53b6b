"""Weights in and out of the trainer as safetensors.

Export (`python -m titan_mimo.export CHECKPOINT_DIR OUT_DIR [--dtype bfloat16] [--name-map MAP.json]`)
reads a complete DCP checkpoint in one process (no process group, full tensors, one module at a
time). With `--format hf` it writes a Hugging Face transformers folder instead (modules loaded
from `hf:` folders only; see titan_mimo/hf/training.py). By default it writes per module
`<module>.safetensors` plus `export.json`:

    {"step": 6, "dtype": "float32",
     "modules": {"vision": {"model": "vit/debug", "file": "vision.safetensors",
                            "names": {"<fqn in titan_mimo>": "<name in the file>", ...}}, ...}}

`names` is the name map: identity unless `--name-map` gave one ({"<module>": {"<fqn>": "<name>"}},
e.g. to match another codebase's names). `checkpoint.initial_load_path` reads the same format, so
weights from elsewhere come in by writing a safetensors file and an export.json that maps them.
Nothing here unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from safetensors.torch import save_file
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.tensor import DTensor, distribute_tensor

from titan_mimo.checkpoint import problem_with, read_marker
from titan_mimo.hf import training as hf_training

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INDEX = "export.json"


def read_tensors(checkpoint: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint whose key starts with `prefix`, full (unsharded), keyed
    without the prefix; one process, no process group."""
    meta = dcp.FileSystemReader(str(checkpoint)).read_metadata()
    sd = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.state_dict_metadata.items()
          if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    if sd:
        dcp.load(sd, checkpoint_id=str(checkpoint), no_dist=True)
    return {k[len(prefix):]: v for k, v in sd.items()}


def read_full_weights(checkpoint: Path, module: str) -> dict[str, torch.Tensor]:
    """Every weight of `module` in a DCP checkpoint as full tensors, without a process group."""
    weights = read_tensors(checkpoint, f"{module}.model.")
    if not weights:
        raise ValueError(f"{checkpoint} has no weights for module '{module}'")
    return weights


def export_checkpoint(checkpoint: Path, out: Path, dtype: str = "float32",
                      name_map: dict[str, dict[str, str]] | None = None) -> dict:
    """Write every module of a complete checkpoint to `out`; returns the export index."""
    if (problem := problem_with(checkpoint)) is not None:
        raise ValueError(f"cannot export {checkpoint}: {problem}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not one of {sorted(DTYPES)}")
    marker = read_marker(checkpoint)
    name_map = name_map or {}
    unknown = set(name_map) - set(marker["models"])
    if unknown:
        raise ValueError(f"name map names modules {sorted(unknown)} that are not in the checkpoint "
                         f"({sorted(marker['models'])})")
    out.mkdir(parents=True, exist_ok=True)
    index = {"step": marker["step"], "dtype": dtype, "modules": {}}
    for module, model in marker["models"].items():
        weights = read_full_weights(checkpoint, module)
        names = {fqn: name_map.get(module, {}).get(fqn, fqn) for fqn in weights}
        if len(set(names.values())) != len(names):
            raise ValueError(f"name map for '{module}' maps two weights to one name")
        tensors = {names[fqn]: t.to(DTYPES[dtype]).contiguous() for fqn, t in weights.items()}
        file = f"{module}.safetensors"
        save_file(tensors, str(out / file), metadata={"module": module, "model": model,
                                                     "step": str(marker["step"])})
        index["modules"][module] = {"model": model, "file": file, "names": names}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return index


def export_hf(checkpoint: Path, out: Path, dtype: str = "float32") -> tuple[int, str, list[Path]]:
    """A complete checkpoint of modules loaded from `hf:` folders -> a Hugging Face transformers
    folder (titan_mimo.hf.training.export_folder); returns (step, the folder's family, files)."""
    if (problem := problem_with(checkpoint)) is not None:
        raise ValueError(f"cannot export {checkpoint}: {problem}")
    marker = read_marker(checkpoint)
    weights = {module: read_full_weights(checkpoint, module) for module in marker["models"]}
    kind, files = hf_training.export_folder(marker["models"], weights, out, dtype)
    return marker["step"], kind, files


def read_index(path: Path, modules: dict[str, str]) -> dict:
    """Check an initial_load_path folder against the configured modules ({name: model});
    file-system only, so a bad path fails before any process group starts."""
    index_file = path / INDEX
    if not index_file.is_file():
        raise ValueError(f"checkpoint.initial_load_path: {index_file} does not exist (write it with "
                         "`python -m titan_mimo.export` or by hand, see titan_mimo/export.py)")
    try:
        index = json.loads(index_file.read_text())
        entries = index["modules"]
    except (ValueError, KeyError) as e:
        raise ValueError(f"checkpoint.initial_load_path: {index_file} is not a valid export index ({e})") from None
    missing = sorted(set(modules) - set(entries))
    if missing:
        raise ValueError(f"checkpoint.initial_load_path: {index_file} has no weights for modules "
                         f"{missing} (it has {sorted(entries)})")
    for name in modules:
        f = path / entries[name]["file"]
        if not f.is_file():
            raise ValueError(f"checkpoint.initial_load_path: {f} does not exist")
        if entries[name].get("model", modules[name]) != modules[name]:
            raise ValueError(f"checkpoint.initial_load_path: module '{name}' was exported from model "
                             f"'{entries[name]['model']}' but is configured as '{modules[name]}'")
    return index


@torch.no_grad()
def load_weights(parts: list[torch.nn.Module], path: Path, module: str, index: dict) -> None:
    """Copy one module's exported weights into this rank's parts (any FSDP/TP/PP placement).

    Each rank reads the full tensors it needs from the memory-mapped file and keeps its own
    shard; no communication, so ranks of different modules need not call this together.
    """
    entry = index["modules"][module]
    f = path / entry["file"]
    with safe_open(str(f), framework="pt") as file:
        stored = set(file.keys())
        for part in parts:
            for fqn, param in part.state_dict().items():
                name = entry["names"].get(fqn)
                if name is None or name not in stored:
                    raise ValueError(f"{f}: no weight for '{module}.{fqn}' (name map gives {name!r})")
                full = file.get_tensor(name)
                if tuple(full.shape) != tuple(param.shape):
                    raise ValueError(f"{f}: '{name}' has shape {tuple(full.shape)}, "
                                     f"'{module}.{fqn}' needs {tuple(param.shape)}")
                full = full.to(device=param.device, dtype=param.dtype)
                if isinstance(param, DTensor):
                    # src_data_rank=None: every rank holds the full tensor, so each takes its
                    # shard locally instead of receiving it from mesh rank 0.
                    full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
                param.copy_(full)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m titan_mimo.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a complete checkpoint directory (…/checkpoint/step-N)")
    parser.add_argument("out", type=Path, help="output folder (safetensors per module + export.json)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--name-map", type=Path, help='JSON {"<module>": {"<fqn>": "<name>"}}')
    parser.add_argument("--format", default="safetensors", choices=["safetensors", "hf"],
                        help="safetensors per module + export.json, or a Hugging Face transformers folder")
    args = parser.parse_args(argv)
    if args.format == "hf":
        if args.name_map:
            raise SystemExit("titan_mimo.export: --name-map does not apply to --format hf (its names are fixed)")
        try:
            step, kind, files = export_hf(args.checkpoint, args.out, args.dtype)
        except ValueError as e:
            raise SystemExit(f"titan_mimo.export: {e}") from None
        print(f"{args.out}: {kind} folder of step {step}, {len(files)} files, {args.dtype}")
        return
    name_map = json.loads(args.name_map.read_text()) if args.name_map else None
    try:
        index = export_checkpoint(args.checkpoint, args.out, args.dtype, name_map)
    except ValueError as e:
        raise SystemExit(f"titan_mimo.export: {e}") from None
    for name, entry in index["modules"].items():
        print(f"{args.out / entry['file']}: {name} ({entry['model']}), {len(entry['names'])} tensors, {args.dtype}")


if __name__ == "__main__":
    main()
