"""The TAS search space: which channel groups are searched and the candidate widths of each.

The groups come from the engine's analysis (`prunekit.analyze` / `prunekit.planning.analyse`), not from a list of
layer names, so any model the engine analyses can be searched: every prunable, exact channel group with at least two
distinct candidate widths is one searchable group. Residual ties, depthwise convolutions and concatenations are
already folded into the groups by the engine; the classifier's output group is refused by it and so never searched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ...errors import ConfigError
from ...graph.types import ChannelGroup

#: The paper's width fractions: C * {0.3, 0.4, ..., 1.0}.
PAPER_FRACTIONS: Tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def width_choices(size: int, fractions: Sequence[float]) -> Tuple[int, ...]:
    """Distinct candidate widths (kept channels) of a group of `size` channels, ascending.

    Each fraction f gives ``max(1, round(f * size))``; duplicates (small groups) are merged, so a group of 4 channels
    has fewer candidates than one of 64.
    """
    if size < 1:
        raise ConfigError(f"tas search space: a group needs at least one channel, got size {size}")
    return tuple(sorted({min(size, max(1, int(round(f * size)))) for f in fractions}))


@dataclass
class SearchableGroup:
    """One searched channel group.

    Attributes:
        id: the engine group id (also the key of the derived width configuration).
        size: channels of the unpruned group.
        widths: candidate kept channels, ascending (the last is `size` when 1.0 is a fraction).
        group: the engine's `ChannelGroup` (members: every tensor slice the width touches).
    """

    id: str
    size: int
    widths: Tuple[int, ...]
    group: ChannelGroup


def searchable_groups(groups: Sequence[ChannelGroup], fractions: Sequence[float] = PAPER_FRACTIONS,
                      ignore: Sequence[str] = ()) -> List[SearchableGroup]:
    """The searched groups of an analysis.

    Args:
        groups: ``analysis.groups``.
        fractions: candidate width fractions in (0, 1].
        ignore: group ids left at full width.

    Returns:
        prunable, exact, channel-unit groups with at least two candidate widths, in the engine's order.
    """
    bad = [f for f in fractions if not 0.0 < float(f) <= 1.0]
    if bad or len(fractions) < 2:
        raise ConfigError(f"tas search space: fractions must be at least two values in (0, 1], got {list(fractions)}")
    out = []
    for g in groups:
        if not g.prunable or not g.exact or g.unit != "channel" or g.id in set(ignore):
            continue
        widths = tuple(w for w in width_choices(g.size, fractions) if w >= max(1, g.min_keep))
        if len(widths) >= 2:
            out.append(SearchableGroup(g.id, g.size, widths, g))
    if not out:
        raise ConfigError("tas search space: the engine found no prunable channel group with two or more candidate "
                          "widths (see prunekit.analyze(...).refused() for why groups were refused)")
    return out
