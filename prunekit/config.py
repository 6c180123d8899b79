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


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _wrong(key: str, value: Any, annotation: Any) -> ConfigError:
    return ConfigError(f"config key '{key}': expected {_type_name(annotation)}, got {type(value).__name__} {value!r}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a parsed value (often a string from the command line) to the field's declared type.

    Raises:
        ConfigError: naming `key` (the dotted path) when the value cannot be read as the declared type, e.g. a
            mapping for a number, a number for a section, ``3.5`` for an int.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return value
    if origin is typing.Union:  # Optional[X], Union[int, str]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{key}' must not be null")
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        raise _wrong(key, value, annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if hasattr(annotation, "from_mapping"):  # sections with their own reader (e.g. a plugin name + options)
            return annotation.from_mapping(value, key)
        if not isinstance(value, dict):
            names = [f.name for f in dataclasses.fields(annotation)]
            raise ConfigError(f"config key '{key}' is a section ({annotation.__name__}), not a value: set its keys "
                              f"instead, e.g. {key}.{names[0] if names else 'key'}=...; got {value!r}")
        return from_dict(annotation, value, prefix=key)
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise _wrong(key, value, annotation)
        inner = args[0] if args else Any  # Tuple[X, ...] and List[X]: every item is an X
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or annotation is tuple else items
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"config key '{key}': expected a mapping (JSON or YAML), got {value!r}") from None
        if not isinstance(value, dict):
            raise _wrong(key, value, annotation)
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _wrong(key, value, annotation)
    if annotation in (int, float):
        if isinstance(value, (bool, dict, list, tuple)):
            raise _wrong(key, value, annotation)
        if annotation is int and isinstance(value, float) and not value.is_integer():  # no silent truncation
            raise _wrong(key, value, annotation)
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise _wrong(key, value, annotation) from None
    if annotation is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise _wrong(key, value, annotation)
        return str(value)
    return value


def from_dict(cls: Type[T], data: Dict[str, Any], prefix: str = "") -> T:
    """Build `cls` from a dict, refusing unknown keys (with the known ones listed) and wrong types.

    Args:
        cls: a config dataclass (nested dataclass fields are read from nested mappings).
        data: the mapping (from YAML / JSON / ``--set``).
        prefix: dotted path of this section, used in error messages (``"plan.budget"``).

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or the dataclass's own validation; the message
            names the full dotted key.
    """
    where = f"'{prefix}'" if prefix else cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"version"})
    if unknown:
        full = f" (config keys {[f'{prefix}.{k}' for k in unknown]})" if prefix else ""
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}{full}; known keys"
                          f"{' of ' + prefix if prefix else ''}: {sorted(names)}")
    hints = _field_types(cls)
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items() if k in names}
    if not prefix:
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(prefix) else f"{prefix}: {text}") from None


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
        if not all(parts):
            raise ConfigError(f"override '{item}': empty key part in '{key}'")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part, {})
            if not isinstance(child, dict):
                path = ".".join(parts[:depth + 1])
                raise ConfigError(f"override '{item}': config key '{path}' is a value ({child!r}), not a section, "
                                  f"so it has no key '{parts[depth + 1]}'")
            node[part] = child = dict(child)
            node = child
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
