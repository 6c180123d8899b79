"""Name-keyed registries with lazy imports.

Each kind of plugin (models, datasets, criteria, allocators, presses, recipes...) has one `Registry`. Entries are
either registered eagerly with the `register` decorator or declared lazily as ``"module.path:attribute"`` strings so
listing a registry never imports heavy optional dependencies.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Dict, List, Optional, Union

from .errors import UnknownNameError


class Registry:
    """A mapping from names to objects (usually classes or factory functions)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.plural = plural(kind)
        self._entries: Dict[str, Union[str, Any]] = {}
        self._help: Dict[str, str] = {}

    def register(self, name: str, obj: Any = None, *, help: str = "") -> Callable:
        """Register `obj` under `name`; usable as a decorator when `obj` is omitted."""

        def _add(target: Any) -> Any:
            self._entries[name] = target
            doc = help or (getattr(target, "__doc__", None) or "").strip().split("\n")[0]
            self._help[name] = doc
            return target

        return _add(obj) if obj is not None else _add

    def lazy(self, name: str, target: str, help: str = "") -> None:
        """Declare `name` as ``"package.module:attr"``, imported on first use."""
        self._entries[name] = target
        self._help[name] = help

    def get(self, name: str) -> Any:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self.names(), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'.{hint} Known {self.plural}: {', '.join(self.names())}"
            )
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry

    def describe(self, name: str) -> str:
        return self._help.get(name, "")

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self.names())


def plural(kind: str) -> str:
    """The word users type for a registry (``prunekit ls presses``): criterion -> criteria, press -> presses,
    distill_loss -> distill_losses, model -> models."""
    if kind == "criterion":
        return "criteria"
    if kind.endswith(("s", "x", "sh", "ch")):
        return kind + "es"
    if kind.endswith("y") and kind[-2:-1] not in "aeiou":
        return kind[:-1] + "ies"
    return kind + "s"


_ALL: Dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """The process-wide registry of one kind (created on first request)."""
    if kind not in _ALL:
        _ALL[kind] = Registry(kind)
    return _ALL[kind]


def all_registries() -> Dict[str, Registry]:
    """Every registry, after importing the modules that fill them."""
    for module in _FILLERS:
        importlib.import_module(module)
    return dict(_ALL)


# Modules whose import declares registry entries (cheap: they only call `lazy`).
_FILLERS: List[str] = [
    "prunekit.models",
    "prunekit.data",
    "prunekit.importance",
    "prunekit.allocate",
    "prunekit.kvcache",
    "prunekit.methods",
    "prunekit.train.regularizers",
    "prunekit.train.distill",
    "prunekit.widths.precrop",
]


def optional_registry_filler(module: str) -> Optional[str]:
    return module if module in _FILLERS else None
