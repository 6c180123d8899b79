"""UDFC-style data-free compression: prune and quantise, then compensate in closed form (seed paper 12).

Bai et al., "Unified Data-Free Compression: Pruning and Quantization without Fine-Tuning", ICCV 2023. The paper's
equations were not available; this is the reconstruction of ``reference/methods.md`` section 12, derived in
``docs/udfc.md`` (UDFC-style, not checked against the PDF). No data is read on the data-free path: the example
inputs are random and only trace the model.

`compress(model, inputs, config)`:

1. groups from `prunekit.analyze`; channels to remove from `prunekit.plan` (criterion ``l1`` by default) unless a
   plan is given; `layers.find_layers` says which groups the closed form covers and why the others are not;
2. layer by layer in forward order, the damaged filters (pruned input columns zeroed, earlier compensation included,
   BN folded, quantised) and the moments (`sources.bn_moments`, or `sources.measured_moments` with
   ``moments="measured"``) give the reconstruction matrix (`closed_form.solve`, or Neuron Merging's rule), folded
   into the consumers' kept input columns;
3. the BN-expected bias correction: each layer's output mean is restored, E[W x] - E[W̃ x̃] with input means from
   the BN moments (DFQ-style), into the layer's bias or its BatchNorm's running mean;
4. physical removal (`prunekit.apply`, verified), then BatchNorm folding and per-channel weight quantization.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..quant.fold import fold_batchnorm, folded_weight_bias
from ..quant.uniform import check_bits, dequantize, quantize_per_channel, quantize_tensor_
from .closed_form import Moments, centered, estimated_error, identity_prior, neuron_merging_scales, solve
from .layers import CompensableLayer, find_layers
from .probe import Probe, probe_model
from .sources import bn_moments, bn_output_std, input_metric, measured_moments, record_inputs, run_layer

COMPENSATIONS = ("udfc", "neuron_merging", "none")
SELECTIONS = ("plan", "reconstruction")


@dataclass
class UDFCConfig:
    """Settings of `compress`.

    Attributes:
        keep: fraction of each prunable group's channels kept (1.0: no pruning).
        bits: weight bits (4..8 typical; None: float32 weights).
        compensation: ``udfc`` (closed form), ``neuron_merging`` (its data-free rule, pruning only) or ``none``.
        moments: ``bn`` (data-free) or ``measured`` (on calibration images: the upper bound of the estimate).
        partners: ``single`` (one kept partner per pruned channel, the spec's form) or ``all`` (ridge least
            squares over every kept channel; the default, better on every model measured, see docs/udfc.md).
        ridge: ridge term alpha relative to the mean E[Ã^2].
        ridge_target: what the ridge shrinks S towards: ``zero`` (the plain ridge, the default; it also scales
            undamaged channels down slightly) or ``identity`` (towards no compensation: an undamaged channel is
            left exactly as it is).
        centered: solve on covariances (least squares with an intercept, supplied by the bias correction) instead
            of raw second moments (the spec's form).
        input_model: how the channel correlation is estimated from the filters: ``white`` (cosine of the filters,
            the spec) or ``bn`` (input channels weighted by the variances the previous BatchNorm implies).
        spatial_corr: correlation of neighbouring input pixels assumed in the filter inner product (0: none).
        bias_correction: restore each changed layer's expected output (UDFC only).
        criterion: `prunekit.plan` criterion choosing the channels when no plan is given.
        selection: ``reconstruction`` (the default: keep each compensable group's count from the plan or the
            criterion, but prune the channels the kept ones rebuild best, `select.greedy_prune`, the data-free
            smallest-l(s*) choice of methods.md) or ``plan`` (exactly the plan's channels). Only the ``udfc``
            compensation re-selects; ``neuron_merging`` and ``none`` always prune the plan's channels.
        guard: per layer, the smallest estimated relative gain of the closed form over the better of Neuron
            Merging and no compensation (both under the same data-free moments) for which it is used; below it the
            layer falls back to that baseline (`_guard`). None: no guard.
        guard_to: the fallback: ``best`` (the baseline with the smaller estimated error), ``neuron_merging``
            (its rule where channels were pruned, else no compensation) or ``none``.
        prune_uncompensable: also prune groups the closed form cannot cover (they are reported); False keeps them.
        nm_lambda / nm_threshold: Neuron Merging's partner weighting and cosine threshold.
    """

    VERSION: ClassVar[int] = 1

    keep: float = 1.0
    bits: Optional[int] = None
    compensation: str = "udfc"
    moments: str = "bn"
    partners: str = "all"
    ridge: float = 0.001
    ridge_target: str = "zero"
    input_model: str = "white"
    centered: bool = True
    spatial_corr: float = 0.0
    bias_correction: bool = True
    criterion: str = "l1"
    selection: str = "reconstruction"
    guard: Optional[float] = None
    guard_to: str = "best"
    prune_uncompensable: bool = True
    nm_lambda: float = 0.85
    nm_threshold: float = 0.1

    def __post_init__(self):
        if not 0.0 < float(self.keep) <= 1.0:
            raise ConfigError(f"udfc: keep must lie in (0, 1], got {self.keep}")
        if self.bits is not None:
            self.bits = check_bits(self.bits)
        if self.compensation not in COMPENSATIONS:
            raise ConfigError(f"udfc: compensation must be one of {COMPENSATIONS}, got {self.compensation!r}")
        if self.moments not in ("bn", "measured"):
            raise ConfigError(f"udfc: moments must be 'bn' or 'measured', got {self.moments!r}")
        if self.partners not in ("single", "all"):
            raise ConfigError(f"udfc: partners must be 'single' or 'all', got {self.partners!r}")
        if self.input_model not in ("white", "bn"):
            raise ConfigError(f"udfc: input_model must be 'white' or 'bn', got {self.input_model!r}")
        if not 0.0 <= self.spatial_corr < 1.0:
            raise ConfigError(f"udfc: spatial_corr must lie in [0, 1), got {self.spatial_corr}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"udfc: selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.guard is not None and not 0.0 <= float(self.guard) < 1.0:
            raise ConfigError(f"udfc: guard must lie in [0, 1) or be None, got {self.guard}")
        if self.guard_to not in ("best", "neuron_merging", "none"):
            raise ConfigError(f"udfc: guard_to must be 'best', 'neuron_merging' or 'none', got {self.guard_to!r}")
        if self.ridge_target not in ("identity", "zero"):
            raise ConfigError(f"udfc: ridge_target must be 'identity' or 'zero', got {self.ridge_target!r}")
        if self.ridge < 0:
            raise ConfigError(f"udfc: ridge must be >= 0, got {self.ridge}")


@dataclass
class CompressResult:
    """What `compress` returns: the compressed float model (weights dequantised in place), the plan applied, the
    integer weights and scales per layer, the BatchNorms folded away, and a JSON-ready report."""

    model: nn.Module
    plan: Any
    quantized: Dict[str, Tuple[torch.Tensor, torch.Tensor]]
    folded: Dict[str, str]
    report: Dict[str, Any] = field(default_factory=dict)
    bits: Optional[int] = None

    def save(self, out_dir, model_spec: Dict[str, Any]):
        """Write the artifact: `prunekit.quant.save_quantized` with bits, else `prunekit.save` (plan + weights)."""
        if self.bits is not None:
            from ..quant.artifact import save_quantized

            return save_quantized(out_dir, self.model, self.quantized, self.bits, self.folded, model_spec, self.plan,
                                  self.report)
        if self.plan is None:
            raise ConfigError("udfc: nothing to save (no pruning and no quantization)")
        import prunekit

        return prunekit.save(self.model, self.plan, out_dir)


class _Work:
    """The state `compress` threads through its steps (original and working copies, probe, removals)."""

    def __init__(self, model: nn.Module, cfg: UDFCConfig, probe: Probe, removed: Dict[str, torch.Tensor],
                 groups) -> None:
        self.cfg, self.probe, self.removed = cfg, probe, removed
        self.orig = copy.deepcopy(model).eval()
        self.work = copy.deepcopy(model).eval()
        self.mo, self.mw = dict(self.orig.named_modules()), dict(self.work.named_modules())
        self.cut_in: Dict[str, List[int]] = defaultdict(list)
        by_id = {g.id: g for g in groups}
        for gid, idx in removed.items():
            for m in by_id[gid].members:
                if m.role == "in" and m.param == "weight" and m.dim == 1:
                    self.cut_in[m.module].extend(m.positions(idx).tolist())
        self.mean_override: Dict[str, Dict[int, float]] = defaultdict(dict)
        self.output_shift: Dict[str, torch.Tensor] = {}

    def bn(self, name: str, which: Dict[str, nn.Module]) -> Optional[nn.Module]:
        bn = self.probe.follower.get(name)
        return which.get(bn) if bn is not None else None

    def reference(self, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Folded original (weight, bias), float64."""
        return folded_weight_bias(self.mo[name], self.bn(name, self.mo))

    def damaged(self, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Folded current weights with pruned input columns zeroed and quantised (what the layer will hold)."""
        w, b = folded_weight_bias(self.mw[name], self.bn(name, self.mw))
        if self.cut_in.get(name):
            w[:, sorted(set(self.cut_in[name]))] = 0.0
        if self.cfg.bits is not None:
            w = dequantize(*quantize_per_channel(w.float(), self.cfg.bits)).double()
        return w, b


def _kept(size: int, removed: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[removed] = False
    return torch.nonzero(mask).flatten()


def _reselect(model: nn.Module, layers: Dict[str, CompensableLayer], probe: Probe,
              removed: Dict[str, torch.Tensor], ridge: float):
    """`select.reselect` on the original model's folded filters and consumer columns."""
    from .select import reselect

    mods = dict(model.named_modules())

    def reference(lay: CompensableLayer):
        bn = mods[lay.bn]
        w, _ = folded_weight_bias(mods[lay.producer], bn)
        return w, bn.bias.detach(), bn_output_std(bn)

    def columns(lay: CompensableLayer):
        return [mods[c].weight.detach().index_select(1, pos).transpose(0, 1) for c, pos in lay.consumers]

    return reselect(removed, layers, reference, columns, ridge)


def _layer_moments(st: _Work, lay: CompensableLayer, kept: torch.Tensor, calibration_inputs) -> Moments:
    w_ref, b_ref = st.reference(lay.producer)
    w_new, _ = st.damaged(lay.producer)
    if st.cfg.moments == "bn":
        bn = st.mo[lay.bn]
        d = st.probe.inputs.get(lay.producer)
        var = d.var if (st.cfg.input_model == "bn" and d is not None) else None
        inner = input_metric(w_ref.shape, var, st.cfg.spatial_corr)
        return bn_moments(w_ref.flatten(1), w_new.flatten(1), bn.bias.detach(), bn_output_std(bn), kept,
                          st.cfg.partners, inner)
    return measured_moments(st.mo[lay.producer], calibration_inputs[lay.producer], w_ref, b_ref, w_new, b_ref,
                            kept, st.cfg.partners)


def _compensate(st: _Work, lay: CompensableLayer, size: int, calibration_inputs) -> Optional[Dict[str, Any]]:
    """Reconstruction matrix of one layer folded into its consumers; returns the layer's report row."""
    cfg = st.cfg
    idx = st.removed.get(lay.group, torch.zeros(0, dtype=torch.long))
    if cfg.compensation == "none" or (idx.numel() == 0 and cfg.bits is None):
        return None
    if cfg.compensation == "neuron_merging" and idx.numel() == 0:
        return None
    kept = _kept(size, idx)
    row: Dict[str, Any] = {"group": lay.group, "producer": lay.producer, "removed": int(idx.numel())}
    if cfg.compensation == "neuron_merging":
        prod, bn = st.mo[lay.producer], st.mo[lay.bn]
        std = torch.sqrt(bn.running_var.detach().double() + bn.eps)
        S = neuron_merging_scales(prod.weight.detach(), bn.weight.detach(), bn.bias.detach(),
                                  bn.running_mean.detach(), std, kept, cfg.nm_lambda, cfg.nm_threshold)
    else:
        m = _layer_moments(st, lay, kept, calibration_inputs)
        prior = identity_prior(size, kept) if cfg.ridge_target == "identity" else None
        S = solve(centered(m) if cfg.centered else m, kept, cfg.partners, cfg.ridge, prior)
        naive = torch.zeros_like(S)
        naive[kept, torch.arange(kept.numel())] = 1.0
        norms = sum(st.mw[c].weight.detach().double().index_select(1, pos).transpose(0, 1).flatten(1).pow(2).sum(1)
                    for c, pos in lay.consumers)
        row.update(estimated_error_naive=estimated_error(m, naive, norms), estimated_error=estimated_error(m, S, norms))
        if cfg.guard is not None:
            S = _guard(st, lay, kept, m, S, naive, norms, row)
        for consumer, pos in lay.consumers:
            for k, value in zip(pos[kept].tolist(), m.mean_d.tolist()):
                st.mean_override[consumer][k] = value
    row["merged"] = int((S[idx].abs().sum(1) > 0).sum()) if idx.numel() else 0
    with torch.no_grad():
        for consumer, pos in lay.consumers:
            weight = st.mw[consumer].weight
            cols = weight.detach().double().index_select(1, pos)  # [O, C, ...]
            new = torch.einsum("oc...,ck->ok...", cols, S)
            weight[:, pos[kept]] = new.to(weight.dtype)
    return row


def _guard(st: _Work, lay: CompensableLayer, kept: torch.Tensor, m: Moments, S: torch.Tensor, naive: torch.Tensor,
           norms: torch.Tensor, row: Dict[str, Any]) -> torch.Tensor:
    """Keep the closed form only where its estimated gain over the baselines it contains is worth the risk.

    The closed form is optimal under the data-free moments, so under those moments it never loses; it loses on
    real data where the moments are wrong. Its estimated relative gain over the better of Neuron Merging's rule and
    no compensation (errors under the same centred moments, the consumer-weighted objective the solve minimises)
    is compared with ``guard``: below it the gain is within the moments' own error, and the layer takes the
    ``guard_to`` baseline instead (bias correction still applies to it). The choice is in the layer's report row.
    """
    cfg = st.cfg
    mc = centered(m) if cfg.centered else m
    options = {"udfc": S, "none": naive}
    if kept.numel() < S.shape[0]:
        prod, bn = st.mo[lay.producer], st.mo[lay.bn]
        std = torch.sqrt(bn.running_var.detach().double() + bn.eps)
        options["neuron_merging"] = neuron_merging_scales(prod.weight.detach(), bn.weight.detach(),
                                                          bn.bias.detach(), bn.running_mean.detach(), std, kept,
                                                          cfg.nm_lambda, cfg.nm_threshold)
    errors = {k: estimated_error(mc, v, norms) for k, v in options.items()}
    fallback = cfg.guard_to if cfg.guard_to in options else "none"
    if cfg.guard_to == "best":
        fallback = min((k for k in errors if k != "udfc"), key=errors.get)
    gain = 1.0 - errors["udfc"] / max(errors[fallback], 1e-30)
    choice = "udfc" if gain >= cfg.guard else fallback
    row.update(guard_gain=gain, guard_errors=errors, choice=choice)
    return options[choice]


def _correct_biases(st: _Work, input_means: Dict[str, Optional[torch.Tensor]]) -> Dict[str, List[str]]:
    """Restore every conv / linear layer's expected output: E[W x] - E[W̃ x̃] (folded units) added to its output."""
    done: Dict[str, List[str]] = {"corrected": [], "no_input_statistics": [], "nowhere_to_put": []}
    for name, layer in st.mw.items():
        if not isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        mean = input_means.get(name)
        if mean is None or mean.numel() != layer.weight.shape[1]:
            done["no_input_statistics"].append(name)
            continue
        damaged_mean = mean.clone().double()
        for pos, value in st.mean_override.get(name, {}).items():
            damaged_mean[pos] = value
        w_ref, _ = st.reference(name)
        w_new, _ = st.damaged(name)
        sum_dims = tuple(range(2, w_ref.dim()))
        w_ref = w_ref.sum(sum_dims) if sum_dims else w_ref
        w_new = w_new.sum(sum_dims) if sum_dims else w_new
        delta = w_ref @ mean.double() - w_new @ damaged_mean  # [O], folded units
        bn = st.bn(name, st.mw)
        with torch.no_grad():
            if bn is not None:
                gain = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
                alive = gain.abs() > 1e-12  # a channel with gamma = 0 outputs beta whatever its input
                raw = torch.where(alive, delta / torch.where(alive, gain, torch.ones_like(gain)),
                                  torch.zeros_like(delta))
                bn.running_mean.sub_(raw.to(bn.running_mean.dtype))
                st.output_shift[name] = raw
            elif layer.bias is not None:
                layer.bias.add_(delta.to(layer.bias.dtype))
                st.output_shift[name] = delta
            else:
                done["nowhere_to_put"].append(name)
                continue
        done["corrected"].append(name)
    return done


def _next_layer_errors(st: _Work, layers: Dict[str, CompensableLayer], sizes: Dict[str, int],
                       inputs: Dict[str, List[torch.Tensor]]) -> Dict[str, float]:
    """Relative squared error of each compensable layer's conv consumers, on real inputs of the producer recorded
    on the original model: consumer_ref(A) against the compressed consumer (compensated columns, bias shift) fed the
    damaged channels (pruned ones zero). Consumers reached through pooling are skipped."""
    out: Dict[str, float] = {}
    with torch.no_grad():
        for gid, lay in layers.items():
            idx = st.removed.get(gid, torch.zeros(0, dtype=torch.long))
            if idx.numel() == 0 and st.cfg.bits is None:
                continue
            w_ref, b_ref = st.reference(lay.producer)
            w_new, b_new = st.damaged(lay.producer)
            num = den = 0.0
            for consumer, pos in lay.consumers:
                d = st.probe.inputs.get(consumer)
                c_ref, c_new = st.mo[consumer], st.mw[consumer]
                if d is None or d.ops != ("relu",) or c_ref.weight.shape[1] != sizes[gid]:
                    continue
                shift = st.output_shift.get(consumer)
                for x in inputs[lay.producer]:
                    a = run_layer(st.mo[lay.producer], x, w_ref, b_ref).clamp_min(0)
                    ad = run_layer(st.mo[lay.producer], x, w_new, b_new).clamp_min(0)
                    a_in, ad_in = torch.zeros_like(a), torch.zeros_like(ad)
                    a_in[:, pos] = a
                    ad_in[:, pos] = ad
                    ad_in[:, pos[idx]] = 0.0
                    zero = torch.zeros(c_ref.weight.shape[0])
                    y = run_layer(c_ref, a_in, c_ref.weight.detach(), zero)
                    yd = run_layer(c_ref, ad_in, c_new.weight.detach(), zero)
                    if shift is not None:
                        yd = yd + shift.to(yd.dtype).view(1, -1, *([1] * (yd.dim() - 2)))
                    num += float((yd - y).pow(2).sum())
                    den += float(y.pow(2).sum())
            if den > 0:
                out[gid] = num / den
    return out


def compress(model: nn.Module, inputs: Any, config: Optional[UDFCConfig] = None, plan=None,
             calibration: Optional[Iterable[torch.Tensor]] = None, eval_images: Optional[Iterable[torch.Tensor]] = None,
             forward_fn: Optional[Callable] = None) -> CompressResult:
    """Prune and/or quantise `model` and compensate in closed form (see the module docstring). `model` is unchanged.

    Args:
        model: a trained network (eval mode), conv / linear layers with BatchNorm where compensation applies.
        inputs: example inputs for tracing (random tensors are enough: no data is needed).
        config: `UDFCConfig` (default: UDFC, no pruning, no quantization).
        plan: a `PruningPlan` to apply instead of planning with ``config.criterion`` and ``config.keep``.
        calibration: image batches [B, C, H, W], only for ``moments="measured"``.
        eval_images: image batches for the per-layer error figures (benchmarks); never used to compress.

    Returns:
        a `CompressResult`.
    """
    import prunekit

    cfg = config or UDFCConfig()
    if cfg.moments == "measured" and calibration is None:
        raise ConfigError("udfc: moments='measured' needs calibration image batches")
    probe = probe_model(model, inputs, forward_fn)
    analysis = prunekit.analyze(model, inputs, forward_fn=forward_fn)
    layers, refused = find_layers(model, analysis.groups, probe)
    if plan is None and cfg.keep < 1.0:
        plan = prunekit.plan(model, inputs, ratio=1.0 - cfg.keep, criterion=cfg.criterion, analysis=analysis,
                             forward_fn=forward_fn)
    if plan is not None and not cfg.prune_uncompensable:
        plan = dataclasses.replace(plan, removed={k: v for k, v in plan.removed.items() if k in layers})
    removed = {k: v for k, v in (plan.removed_tensors() if plan is not None else {}).items() if v.numel()}
    selection_errors: Dict[str, float] = {}
    if cfg.selection == "reconstruction" and cfg.compensation == "udfc" and removed:
        removed, selection_errors = _reselect(model, layers, probe, removed, cfg.ridge)
        plan = dataclasses.replace(plan, removed={k: (removed[k].tolist() if k in removed else list(v))
                                                  for k, v in plan.removed.items()},
                                   provenance={**plan.provenance, "udfc_selection": "reconstruction"})
    st = _Work(model, cfg, probe, removed, analysis.groups)
    sizes = {g.id: g.size for g in analysis.groups}
    keep_inputs = [lay.producer for lay in layers.values()]
    calib = record_inputs(st.orig, calibration, keep_inputs) if cfg.moments == "measured" else None
    rows = []
    for lay in sorted(layers.values(), key=lambda item: item.order):
        row = _compensate(st, lay, sizes[lay.group], calib.inputs if calib else None)
        if row is not None:
            rows.append(row)
    bias = {"corrected": [], "no_input_statistics": [], "nowhere_to_put": []}
    if cfg.bias_correction and cfg.compensation == "udfc":
        means = calib.means if calib is not None else {k: (d.mean if d is not None else None)
                                                       for k, d in probe.inputs.items()}
        bias = _correct_biases(st, means)
    errors: Dict[str, float] = {}
    if eval_images is not None:
        rec = record_inputs(st.orig, eval_images, keep_inputs)
        errors = _next_layer_errors(st, layers, sizes, rec.inputs)
        for row in rows:
            row["next_layer_error"] = errors.get(row["group"])
    compressed = st.work
    if plan is not None and removed:
        compressed = prunekit.apply(st.work, plan, inputs, forward_fn=forward_fn)
    quantized: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    folded: Dict[str, str] = {}
    if cfg.bits is not None:
        folded = dict(probe.follower)
        fold_batchnorm(compressed, folded)
        for name, m in compressed.named_modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                quantized[name] = quantize_tensor_(m.weight, cfg.bits)
    unquantized = [n for n, p in compressed.named_parameters()
                   if p.dim() >= 2 and n.rsplit(".", 1)[0] not in quantized] if cfg.bits is not None else []
    report = {
        "config": dataclasses.asdict(cfg),
        "removed_channels": int(sum(v.numel() for v in removed.values())),
        "selection_estimated_error": selection_errors,
        "layers": rows,
        "compensable_groups": sorted(layers),
        "uncompensated_pruned_groups": {gid: refused.get(gid, "not compensable") for gid in removed
                                        if gid not in layers},
        "refused_groups": refused,
        "bias_correction": {k: len(v) for k, v in bias.items()},
        "bias_correction_skipped": bias["no_input_statistics"] + bias["nowhere_to_put"],
        "quantized_layers": len(quantized),
        "unquantized_matrices": unquantized,
        "next_layer_error_mean": (sum(errors.values()) / len(errors)) if errors else None,
        "data_used": {"calibration": calib is not None, "eval_images": eval_images is not None},
    }
    return CompressResult(compressed.eval(), plan, quantized, folded, report, cfg.bits)
