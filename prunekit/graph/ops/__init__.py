"""Channel rules for torch functions, keyed by function name. One small module per family of operations.

A rule is ``fn(state, func, name, args, kwargs, out)``: it reads input labels with ``state.get``, couples channels
through ``state.uf`` and sets output labels with ``state.set``. Users can add their own with `register_op`.
"""
from typing import Callable, Dict

OP_RULES: Dict[str, Callable] = {}


def register_op(*names: str):
    def _add(fn):
        for n in names:
            OP_RULES[n] = fn
        return fn

    return _add


from . import elementwise, shape, index, reduce, linalg, product, params  # noqa: E402,F401  (fill OP_RULES)
