"""Layer rules: modules the tracer handles whole, because they own parameters whose slices hold channels.

A rule has ``propagate(state, name, module, args, kwargs, output)`` (record members, couple channels, label the
output) and ``fixup(module, old_shapes)`` (rewrite attributes after its tensors were sliced). Register a rule for a
module type with `register_layer(Type)`, or for modules recognised by a predicate with `register_layer_predicate`.
Users register rules for their own layer types the same way, without forking.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch

_BY_TYPE: Dict[type, "object"] = {}
_BY_PREDICATE: List[Tuple[Callable[[torch.nn.Module], bool], "object"]] = []


def register_layer(*types: type):
    def _add(rule_cls):
        for t in types:
            _BY_TYPE[t] = rule_cls()
        return rule_cls

    return _add


def register_layer_predicate(predicate: Callable[[torch.nn.Module], bool]):
    def _add(rule_cls):
        _BY_PREDICATE.append((predicate, rule_cls()))
        return rule_cls

    return _add


def find_rule(module: torch.nn.Module) -> Optional[object]:
    for cls in type(module).__mro__:
        rule = _BY_TYPE.get(cls)
        if rule is not None:
            return rule
    for predicate, rule in _BY_PREDICATE:
        if predicate(module):
            return rule
    return None


def input_tensor(args, kwargs, key: str = "input") -> Optional[torch.Tensor]:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for k in (key, "hidden_states", "x", "input"):
        if isinstance(kwargs.get(k), torch.Tensor):
            return kwargs[k]
    return None


def first_output(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


from . import conv, linear, norm, embedding, attention, gpt2  # noqa: E402,F401
