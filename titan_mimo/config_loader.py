"""Loading a job configuration: TOML file -> `JobConfig` dataclasses -> `--section.key=value`
overrides, with errors that name the dotted path (and the closest valid key); the resolved
config back to TOML."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import tomli_w

from titan_mimo.config import JobConfig

__all__ = ["config_from_dict", "load_config", "parse_cli_overrides", "to_dict", "write_config"]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert a TOML or CLI value to the annotated type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"{path} = {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{path}: union types are not supported in config")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{path} = {value!r} must be a list")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path} = {value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path} = {value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path} = {value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{path} = {value!r} must be a string")
        return value
    raise TypeError(f"{path}: unsupported config type {tp}")


def _unknown_key_error(path: str, key: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"[{path}]" if path else "the top level"
    return ValueError(f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}")


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"[{path}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key not in fields:
            raise _unknown_key_error(path, key, list(fields))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, sub)
        elif tp == dict[str, Any]:
            if not isinstance(value, dict) or any(isinstance(v, dict) for v in value.values()):
                raise ValueError(f"[{sub}] must be a table of values (name = value)")
            kwargs[key] = dict(value)
        elif typing.get_origin(tp) is dict:
            _, val_tp = typing.get_args(tp)
            if not isinstance(value, dict):
                raise ValueError(f"[{sub}] must be a table of tables")
            kwargs[key] = {k: _build(val_tp, v, f"{sub}.{k}") for k, v in value.items()}
        else:
            kwargs[key] = _coerce(value, tp, sub)
    missing = [f.name for f in fields.values()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name not in kwargs]
    if missing:
        raise ValueError(f"[{path}] is missing required key(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _parse_cli_value(text: str, tp: Any) -> Any:
    """Parse CLI text as a TOML value; bare words are strings (`--job.dump_folder=out/x`).
    A string field keeps the text as typed unless it is a quoted TOML string, so that
    `--job.dump_folder=2024-06-01` or `--job.description=123` are not dates or numbers."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    return text if tp is str and not isinstance(value, str) else value


def _apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set data[a][b]... = value after checking each key against the config's types, so an
    unknown key fails with the valid ones listed (module names come from the file)."""
    keys = dotted.split(".")
    node, tp = data, JobConfig
    for depth, key in enumerate(keys):
        prefix = ".".join(keys[:depth])
        if tp == dict[str, Any]:  # free-form values (model_args): checked where they are used
            if depth != len(keys) - 1:
                raise ValueError(f"--{dotted}: {prefix} holds plain values, not tables")
            tp = Any
        elif typing.get_origin(tp) is dict:  # the modules table: keys are module names
            if key not in node:
                raise ValueError(
                    f"--{dotted}: no module named {key!r} in [{prefix}]; "
                    f"modules: {', '.join(node) or 'none'}"
                )
            tp = typing.get_args(tp)[1]
        elif dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if key not in hints:
                raise _unknown_key_error(prefix, key, list(hints))
            tp = hints[key]
        else:
            raise ValueError(f"--{dotted}: {prefix} is a value, not a table")
        if depth < len(keys) - 1:
            node = node.setdefault(key, {})
    if dataclasses.is_dataclass(tp) or tp == dict[str, Any] or typing.get_origin(tp) is dict:
        raise ValueError(f"--{dotted} names a table; set one of its keys, e.g. --{dotted}.<key>=...")
    node[keys[-1]] = _parse_cli_value(value, tp) if isinstance(value, str) else value


def parse_cli_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, Any]]]:
    """Split argv into the --config path and (dotted key, text) overrides; the text is parsed
    against the field's type when the override is applied."""
    config_path, overrides, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; use --config PATH and --section.key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                if key == "config":
                    raise ValueError("--config needs a path")
                value = "true"  # a bare flag such as --parallelism.colocated
            else:
                i += 1
                value = argv[i]
        if key in ("config", "job.config_file"):
            config_path = value
        else:
            overrides.append((key, value))
        i += 1
    return config_path, overrides


def load_config(argv: list[str]) -> JobConfig:
    """The launch contract: `--config PATH.toml [--section.key=value ...]`."""
    config_path, overrides = parse_cli_overrides(argv)
    if config_path is None:
        raise ValueError("missing --config PATH.toml")
    path = Path(config_path)
    if not path.is_file():
        raise ValueError(f"--config {config_path}: no such file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{config_path}: invalid TOML: {e}") from None
    return config_from_dict(data, overrides, source=str(config_path))


def config_from_dict(data: dict[str, Any], overrides: list[tuple[str, Any]] = (),
                     source: str = "config") -> JobConfig:
    try:
        for dotted, value in overrides:
            _apply_override(data, dotted, value)
        cfg = _build(JobConfig, data, "")
        cfg.validate()
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return cfg


def to_dict(cfg: JobConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def write_config(cfg: JobConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(to_dict(cfg)))
