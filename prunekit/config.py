"""Typed configs: dataclasses read from YAML/TOML files plus ``--set key=value`` overrides.

A config class is a plain ``@dataclass`` whose fields have defaults; validation lives in ``__post_init__`` and raises
`ConfigError`. Nested dataclasses are allowed. The CLI generates its options from the fields (see `add_config_args`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Type, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a parsed value (often a string from the command line) to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key)
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return from_dict(annotation, value)
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        inner = args[0] if args else str
        items = [_coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple or annotation is tuple else items
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            value = json.loads(value)
        return dict(value)
    try:
        if annotation is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation in (int, float, str):
            return annotation(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}': cannot read {value!r} as {annotation.__name__}") from None
    return value


def from_dict(cls: Type[T], data: Dict[str, Any]) -> T:
    """Build `cls` from a dict, refusing unknown keys (with the known ones listed)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"version"})
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known keys: {sorted(names)}")
    hints = _field_types(cls)
    kwargs = {k: _coerce(v, hints[k], k) for k, v in data.items() if k in names}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Dict[str, Any]:
    out = dataclasses.asdict(cfg)
    out["version"] = getattr(cfg, "VERSION", 1)
    return out


def read_config_file(path: str | Path) -> Dict[str, Any]:
    """Read a YAML or TOML file into a dict, with a clear error on malformed content."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # parser errors differ by format; all mean the same to the user
        raise ConfigError(f"malformed config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def apply_overrides(data: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``a.b=value`` strings onto a nested dict (values parsed as YAML scalars)."""
    import yaml

    data = dict(data)
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except Exception:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def load_config(cls: Type[T], path: Optional[str] = None, overrides: Iterable[str] = (), base: Optional[dict] = None) -> T:
    data = dict(base or {})
    if path:
        data.update(read_config_file(path))
    return from_dict(cls, apply_overrides(data, overrides))


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--field`` option per top-level scalar field of `cls`, plus ``--config`` and ``--set``."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "") if f.metadata else ""
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f"cfg__{f.name}", default=None,
            help=f"{help_text} (default: {default})".strip(),
        )
    parser.add_argument("--config", default=None, help="YAML or TOML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")


def config_from_args(cls: Type[T], args: argparse.Namespace) -> T:
    data: Dict[str, Any] = {}
    if getattr(args, "config", None):
        data.update(read_config_file(args.config))
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            data[key[5:]] = value
    return from_dict(cls, apply_overrides(data, getattr(args, "overrides", [])))
