"""Several example inputs for one model: one batch per branch of a forward that depends on its input."""
from __future__ import annotations

from typing import Any, List


class Examples(list):
    """A list of example inputs (each a tensor, tuple or dict, as for one call of the model).

    Plain lists and tuples already mean "positional arguments of one call", so several batches are wrapped:
    ``prunekit.analyze(model, Examples([x_short, x_long]))``. Tracing runs every batch and the channel groups are the
    union of what each trace saw; verification runs on every batch.
    """

    def __init__(self, batches=()):
        super().__init__(batches)
        if not len(self):
            from ..errors import ConfigError

            raise ConfigError("Examples needs at least one example input")


def as_examples(inputs: Any) -> List[Any]:
    """The batches of `inputs`: the items of an `Examples`, otherwise `inputs` as the single batch."""
    return list(inputs) if isinstance(inputs, Examples) else [inputs]


def first_example(inputs: Any) -> Any:
    """The first batch (what code that needs one example, e.g. MAC counting, runs on)."""
    return as_examples(inputs)[0]
