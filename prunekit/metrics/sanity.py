"""Plain-language warnings about results that look like success but are not: nothing pruned, accuracy at chance."""
from __future__ import annotations

import math
from typing import Optional


def nothing_removed_message(plan) -> Optional[str]:
    """A warning when `plan` (a `PruningPlan`) removes no unit at all, else None."""
    if any(plan.removed.values()):
        return None
    return ("the plan removes nothing: the model is unchanged. Every group was refused, ignored or kept by the "
            "budget; see the refused groups above, or lower --keep-macs / raise --ratio")


def at_chance_message(accuracy: Optional[float], num_classes: Optional[int], what: str = "accuracy") -> Optional[str]:
    """A warning when `accuracy` is no better than guessing among `num_classes` (within 1.5x of 1 / classes).

    Args:
        accuracy: in [0, 1], or None (nothing to say).
        num_classes: number of classes (None or < 2: nothing to say).
    """
    if accuracy is None or not num_classes or num_classes < 2 or math.isnan(accuracy):
        return None
    chance = 1.0 / num_classes
    if accuracy > 1.5 * chance:
        return None
    return (f"{what} {accuracy:.4f} is at chance level ({chance:.4f} for {num_classes} classes): the model "
            f"computes nothing useful; fine-tune it, or prune less")
