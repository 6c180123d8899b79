"""Module-name patterns (``ignore``): glob patterns where a pattern naming a container covers its children."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Iterable, List, Sequence, Set

from ..errors import ConfigError
from .types import ChannelGroup


def matches(name: str, pattern: str) -> bool:
    """True when `pattern` (a glob) names module `name` or one of its containers."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern.rstrip(".") + ".*")


def resolve(names: Iterable[str], patterns: Sequence[str]) -> Set[str]:
    """The module names the patterns cover; a pattern that covers nothing is an error naming the nearest names."""
    names = [n for n in names if n]
    covered: Set[str] = set()
    for pat in patterns:
        hit = {n for n in names if matches(n, pat)}
        if not hit:
            near = difflib.get_close_matches(pat, names, n=5, cutoff=0.3)
            hint = f"; nearest module names: {', '.join(near)}" if near else f"; module names look like: " \
                                                                           f"{', '.join(names[:5])}"
            raise ConfigError(f"ignore pattern '{pat}' matches no module of the model{hint}")
        covered |= hit
    return covered


def ignored_reason(group: ChannelGroup, covered: Set[str]) -> str:
    """Why `group` is left alone because of ignored modules ('' when it is not): a group is ignored when an ignored
    module owns its units (produces or normalises them), since ignoring a module keeps its output width."""
    owners = sorted({m.module for m in group.members if m.role != "in" and m.module in covered})
    if not owners:
        return ""
    return f"ignored: module '{owners[0]}' is in the ignore list (its output width is kept)"


def apply_ignore(groups: Sequence[ChannelGroup], covered: Set[str]) -> List[ChannelGroup]:
    """Copies of `groups` with those owned by an ignored module refused (reason says so), and groups refused only
    because an untraced module might read them given back when that module is ignored."""
    import copy

    from .untraced import lift_untraced

    out: List[ChannelGroup] = []
    for g in groups:
        g2 = copy.copy(g)
        g2.reasons, g2.tags = list(g.reasons), dict(g.tags)
        lift_untraced(g2, covered)
        reason = ignored_reason(g2, covered)
        if reason and g2.prunable:
            g2.prunable = False
            g2.reasons.insert(0, reason)
        out.append(g2)
    return out

