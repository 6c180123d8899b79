"""One recipe stage's folder: is it finished under these settings, may this run claim it, and if not, why.

A stage records its settings (the task section and the sections of it and every earlier stage, JSON-ready) and their
hash, the fingerprint, in ``started.json`` when it begins and in ``done.json`` when it ends. A folder made under other
settings is refused with every key that changed, or cleared when the recipe's ``overwrite`` is set.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import StageSettingsChanged
from ..io import atomic_write_text

DONE_FILE = "done.json"
STARTED_FILE = "started.json"
MAX_KEYS_SHOWN = 8

# keys of the fingerprint that are not config keys, shown by what they mean
_READABLE_KEYS = {"weights_digest": "content of task.weights (digest)", "version": "recipe config version"}
_ABSENT = object()


def settings_hash(settings: Dict[str, Any]) -> str:
    """The fingerprint: what finished stages are matched by (pinned by a test: changing it strands users' runs)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class StageFolder:
    """``folder`` of stage ``name`` of recipe ``recipe``, as this run's ``settings`` see it."""

    def __init__(self, folder: Path, name: str, settings: Dict[str, Any], recipe: str, overwrite: bool):
        self.folder, self.name, self.settings, self.recipe, self.overwrite = folder, name, settings, recipe, overwrite
        self.fingerprint = settings_hash(settings)

    def finished(self) -> Optional[Dict[str, Any]]:
        """The facts of a finished stage with these settings; None when it must (re)run."""
        marker = self.folder / DONE_FILE
        if not marker.exists():
            return None
        data = json.loads(marker.read_text())
        if data.get("fingerprint") == self.fingerprint:
            # same settings but the saved model is gone (deleted by hand): the stage simply runs again
            return data["info"] if (self.folder / "model").is_dir() else None
        self._refuse_or_clear(data)
        return None

    def claim(self, later: List[Path]) -> None:
        """Mark the folder as these settings' (refusing another's) and clear later stages' folders."""
        started = self.folder / STARTED_FILE
        if started.exists():
            data = json.loads(started.read_text())
            if data.get("fingerprint") != self.fingerprint:
                self._refuse_or_clear(data)
        for path in later:
            if path.exists():
                shutil.rmtree(path)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not started.exists():
            atomic_write_text(started, json.dumps(self._marker()))

    def mark_done(self, info: Dict[str, Any]) -> None:
        atomic_write_text(self.folder / DONE_FILE, json.dumps({**self._marker(), "info": info}, indent=2))

    def _marker(self) -> Dict[str, Any]:
        return {"stage": self.name, "fingerprint": self.fingerprint, "settings": self.settings}

    def _refuse_or_clear(self, found: Dict[str, Any]) -> None:
        if self.overwrite:
            shutil.rmtree(self.folder)
            return
        changed = settings_diff(found["settings"], self.settings) if "settings" in found else []
        if changed:
            why = "; ".join(changed[:MAX_KEYS_SHOWN])
            if len(changed) > MAX_KEYS_SHOWN:
                why += f"; and {len(changed) - MAX_KEYS_SHOWN} more"
        elif "settings" in found:  # only a hand-edited marker gets here: the settings hash to the fingerprint
            why = "its marker's fingerprint does not match the settings it records (edited by hand?)"
        else:  # folders written before the settings were recorded beside the fingerprint
            why = "an earlier prunekit made it and did not record its settings: the task or stage sections " \
                  "changed, or a newer prunekit added keys to them"
        raise StageSettingsChanged(f"recipe {self.recipe}: stage '{self.name}' in {self.folder} was made with "
                                   f"different settings ({why}); use another out_dir or set overwrite=true")


def settings_diff(old: Any, new: Any, prefix: str = "") -> List[str]:
    """``"key: old -> new"`` for every dotted key whose value differs (``absent`` where one side lacks it).

    Values compare as JSON, as the fingerprint hashes them, so 1 and 1.0 differ here exactly when they do there."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: List[str] = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else _READABLE_KEYS.get(str(key), str(key))
            out += settings_diff(old.get(key, _ABSENT), new.get(key, _ABSENT), path)
        return out
    if old is not _ABSENT and new is not _ABSENT and json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True):
        return []
    return [f"{prefix}: {_shown(old)} -> {_shown(new)}"]


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    if not isinstance(value, float):
        return json.dumps(value)
    text = format(value, ".10g")  # 0.0003, not 0.00030000000000000003
    return text if any(c in text for c in ".en") else text + ".0"  # 1.0 stays distinct from 1
