"""Where a CNN can take per-input channel masks: engine channel groups with a single producing conv, plus gates.

`find_sites` asks the engine (`prunekit.analyze`) which channels move together. A group becomes a mask site when one
ungrouped ``Conv2d`` produces it (dim 0 of its weight), optionally followed by the group's BatchNorm; the mask then
multiplies that BatchNorm's (or the conv's) output, and the consumers of the site (convolutions reading its channels
along dim 1 of their weight) skip the masked input channels in the gathered execution path.

Every other group stays as a group (it cannot be masked as one unit), with the reason recorded:

- several producers: the channel is tied across a residual add, so zeroing one producer's output does not zero the
  channel in the sum (the identity path still carries it); a mask shared by the whole stage would need one decision
  for all its layers, which FTWT does not make;
- the engine refused the group (its reason is kept), or the producer is not a plain conv.

With ``gate_tied`` (the default, as FTWT's ResNets: the stem and each block's second conv carry a predictor, masked
before the residual add), every other ungrouped ``Conv2d`` becomes a *gate* site (``tied=True``): its filters are
masked per input (their outputs are zero, so their MACs are skipped), but nobody downstream skips input channels,
because the sum they feed is still dense. The gate's labels measure the magnitude of what the conv adds (``abs`` of
the BatchNorm output, FTWT's ground truth "before the residual"), as that output is not followed by its own ReLU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from torch import nn


@dataclass
class MaskSite:
    """One maskable layer.

    Attributes:
        group: the engine group id.
        conv: qualified name of the producing ``Conv2d``.
        norm: qualified name of the BatchNorm right after it ("" when there is none); the mask multiplies its output.
        channels: filters of the conv (= mask width).
        consumers: ``{conv name: input positions}`` for convolutions reading the channels (position i of the
            group's channel i).
        other_readers: modules reading the channels that are not such convolutions (a linear head, a grouped conv):
            they see the masked channels as zeros.
        tied: a gate on one producer of a group tied across residual adds (filters skipped, no consumer skips).
    """

    group: str
    conv: str
    norm: str
    channels: int
    consumers: Dict[str, List[int]] = field(default_factory=dict)
    other_readers: List[str] = field(default_factory=list)
    tied: bool = False

    @property
    def mask_module(self) -> str:
        return self.norm or self.conv

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "MaskSite":
        return cls(group=str(data["group"]), conv=str(data["conv"]), norm=str(data["norm"]),
                   channels=int(data["channels"]),
                   consumers={str(k): [int(i) for i in v] for k, v in dict(data.get("consumers", {})).items()},
                   other_readers=[str(v) for v in data.get("other_readers", [])],
                   tied=bool(data.get("tied", False)))


def _plain_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == 1


def _site_of(group, modules: Dict[str, nn.Module]) -> Tuple[MaskSite | None, str]:
    """The site a group gives, or (None, why it stays dense)."""
    if not group.prunable:
        return None, "; ".join(group.reasons) or "refused by the engine"
    producers = [m for m in group.members if m.role == "out" and m.param == "weight" and m.dim == 0]
    if len(producers) != 1:
        names = sorted({m.module for m in producers})
        return None, (f"channel tied across a residual add by {len(names)} producers ({', '.join(names[:4])}"
                      f"{' ...' if len(names) > 4 else ''}): masking one producer would not zero the channel in the "
                      f"sum, so no reader can skip it (with gate_tied, each producer's filters are gated alone)")
    conv = producers[0]
    if not _plain_conv(modules.get(conv.module)):
        return None, f"producer '{conv.module}' is not an ungrouped Conv2d"
    if conv.index_map.shape[1] != 1 or not torch.equal(conv.index_map[:, 0], torch.arange(group.size)):
        return None, f"producer '{conv.module}' does not own its channels one to one"
    norms = sorted({m.module for m in group.members if m.role == "norm"})
    if len(norms) > 1 or (norms and not isinstance(modules.get(norms[0]), nn.modules.batchnorm._BatchNorm)):
        return None, f"channels normalised by {norms}: only one BatchNorm after the conv is supported"
    consumers, others = {}, set()
    for m in group.members:
        if m.role != "in":
            continue
        if m.param == "weight" and m.dim == 1 and _plain_conv(modules.get(m.module)) and m.index_map.shape[1] == 1:
            consumers[m.module] = [int(i) for i in m.index_map[:, 0].tolist()]
        else:
            others.add(m.module)
    return MaskSite(group.id, conv.module, norms[0] if norms else "", group.size, consumers,
                    sorted(others - set(consumers))), ""


def find_sites(model: nn.Module, inputs: Any, gate_tied: bool = True) -> Tuple[List[MaskSite], Dict[str, str]]:
    """Mask sites of `model` from the engine's channel groups (and gates on every other conv).

    Args:
        model: a CNN the engine can trace.
        inputs: example inputs, e.g. ``[1, 3, 32, 32]``.
        gate_tied: also gate the filters of every ungrouped conv that is not a group's single producer (residual
            branch outputs, the stem): output-side savings only.

    Returns:
        (sites in forward order, ``{group id: why it is not masked as one unit}`` for every other group).
    """
    import prunekit

    analysis = prunekit.analyze(model, inputs)
    modules = dict(model.named_modules())
    sites, dense = [], {}
    for group in analysis.groups:
        site, why = _site_of(group, modules)
        if site is None:
            dense[group.id] = why
        else:
            sites.append(site)
    for s in _norm_not_after_conv(model, inputs, sites):
        dense[s.group] = f"BatchNorm '{s.norm}' does not read conv '{s.conv}' directly: a mask between them is undefined"
        sites.remove(s)
    if gate_tied:
        sites += _gates(model, inputs, {s.conv for s in sites})
    order = {name: i for i, name in enumerate(modules)}
    return sorted(sites, key=lambda s: order[s.conv]), dense


def _norm_not_after_conv(model: nn.Module, inputs: Any, sites: List[MaskSite]) -> List[MaskSite]:
    """Sites whose BatchNorm does not read exactly the conv's output (checked on one forward)."""

    outputs, norm_inputs, handles = {}, {}, []
    modules = dict(model.named_modules())
    for s in sites:
        if not s.norm:
            continue
        handles.append(modules[s.conv].register_forward_hook(
            lambda mod, args, out, name=s.conv: outputs.__setitem__(name, out)))
        handles.append(modules[s.norm].register_forward_pre_hook(
            lambda mod, args, name=s.norm: norm_inputs.__setitem__(name, args[0])))
    _forward_with_hooks(model, inputs, handles)
    return [s for s in sites if s.norm and norm_inputs.get(s.norm) is not outputs.get(s.conv)]


def _gates(model: nn.Module, inputs: Any, taken: set) -> List[MaskSite]:
    """A gate site for every ungrouped conv not in `taken` that runs on `inputs`, with the BatchNorm that reads
    exactly its output (checked on one forward), if any."""

    outputs, norm_of, handles = {}, {}, []
    for name, m in model.named_modules():
        if _plain_conv(m) and name not in taken:
            handles.append(m.register_forward_hook(
                lambda mod, args, out, name=name: outputs.__setitem__(id(out), (name, out))))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            def pre(mod, args, name=name):
                hit = outputs.get(id(args[0]))
                if hit is not None and hit[1] is args[0]:
                    norm_of.setdefault(hit[0], name)
            handles.append(m.register_forward_pre_hook(pre))
    _forward_with_hooks(model, inputs, handles)
    convs = {name for name, _ in outputs.values()}
    modules = dict(model.named_modules())
    return [MaskSite(group=f"gate:{name}", conv=name, norm=norm_of.get(name, ""),
                     channels=modules[name].out_channels, tied=True) for name in sorted(convs)]


def _forward_with_hooks(model: nn.Module, inputs: Any, handles: List[Any]) -> None:
    """One no-grad forward on `inputs` that the registered hooks observe; the hooks are always removed."""
    from ..graph.trace import call_model

    try:
        with torch.no_grad():
            call_model(model, inputs, None)
    finally:
        for h in handles:
            h.remove()
