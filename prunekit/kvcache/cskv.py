"""CSKV: low-rank key/value projections and a bi-branch cache of rank-r latents plus a full-precision window.

Each layer's key projection ``W_K [H_kv*D, d]`` (all key-value heads stacked, as the official code does) is factored
as ``W_K ~= up_K @ down_K`` with ``down_K [r_K, d]`` and ``up_K [H_kv*D, r_K]``; the same for values. The cache stores
the latents ``c = down @ x`` of old tokens (``[B, T, r]``, optionally quantised to 8 or 4 bits) and keeps the most
recent tokens' original keys and values (the window: ``window`` tokens; with quantised latents between ``window`` and
``2*window - 1``, flushed ``window`` tokens at a time so key scales cover whole blocks), and the first ``sink``
tokens' originals. At attention time old keys are reconstructed pre-RoPE (``up_K @ c + b_K``) and rotated at their
own positions; the value up-projection is absorbed into the output side, ``(P @ c_V) @ up_V^T``.

Factors come from `prunekit.kvcache.calibrate` (one call: ASVD initialisation plus layer-wise reconstruction
training with the recommended settings; ``prunekit kv calibrate`` on the command line), from a folder it saved
(`CSKVPress.from_pretrained`), or from calibration data given to the press (``data=``, calibrated when the context
opens). A press with none of these refuses to run: an uncalibrated SVD of the weights loses far more (+66%
perplexity at 50% on SmolLM2) and is available only explicitly, as ``init="svd"``.

Decoding cost: old keys are rebuilt from their latents (``up_K @ c``) and rotated at every step, which RoPE makes
unavoidable; the rebuild runs in blocks of `KEY_BLOCK` tokens so its temporaries stay in the CPU caches (4x faster
than one pass on SmolLM2 at 4k tokens). No rotary angle is computed per token and step: rotations compose,
``q . R(p0 + t) k = (R(p0)^T q) . (R(t) k)``, so each block rotates its rebuilt keys by one fixed table of
`KEY_BLOCK` angles (made when the context opens, counted in `CSKVPress.fixed_nbytes`) and the few query rows by the
block's start (`LatentLayer._latent_logits_blockwise`). The value up-projection is applied once to the
attention-weighted latents (``(P @ c_V) @ up_V^T``), never per token. Folding ``up_V`` further into ``o_proj``
would need an ``[hidden, H * r_V]`` matrix per layer (about 3x the factors' bytes) to save ``H * D * r_V``
multiply-adds per step, so it is not done. Float latents grow in `prunekit.kvcache.buffers.TokenBuffer` chunks
instead of being copied at every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import torch

from ..errors import ConfigError
from . import hf_compat
from .base import CompressedLayer, KVPress, storage_nbytes
from .buffers import TokenBuffer
from .hf_compat import AttentionCall
from .quant import QuantizedTensor, cat_tokens, quantize


DEFAULT_DENSITY = 0.2  # the recommended setting: the cache is about 80% smaller
KEY_BLOCK = 1024  # latent keys rebuilt per block while decoding
INITS = ("calibrated", "svd")
EXACT_BY = ("attention", "error")


def refusal_message(press: "CSKVPress") -> str:
    """What to do when a CSKV press has no calibrated factors (the commands that make them)."""
    return (f"CSKVPress has no calibrated factors. Make them once and reuse them:\n"
            f"  prunekit kv calibrate --model MODEL --density {press.k_density} --out cskv_factors\n"
            f"  press = CSKVPress.from_pretrained('cskv_factors')\n"
            f"or in Python: press = prunekit.kvcache.calibrate(model, tokenizer, density={press.k_density}); or give "
            f"the press calibration data (CSKVPress(data=token_ids)) to calibrate when its context opens. "
            f"init='svd' runs an uncalibrated SVD of the weights (much worse: +66% perplexity at 50% on SmolLM2).")


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the ``rotate_half`` layout: channel ``i`` pairs with ``i + D/2``; ``x [..., D]``, ``cos, sin``
    broadcastable to ``[..., D/2]``. Two fused multiply-adds per half, no ``cat`` temporaries."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    lo, hi = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=lo)
    lo.addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=hi)
    hi.addcmul_(x1, sin)
    return out


def rank_for(density: float, kv_dim: int) -> int:
    """Latent rank for a density (fraction of the stacked ``H_kv * D`` channels)."""
    return max(1, min(kv_dim, int(round(density * kv_dim))))


def latent_ranks(model: torch.nn.Module, k_density: float, v_density: float):
    """``(k_rank, v_rank)`` per layer for densities of the model's stacked ``H_kv * D`` key/value channels."""
    _, kv_heads, head_dim = hf_compat.head_layout(hf_compat.attention_modules(model)[0])
    return rank_for(k_density, kv_heads * head_dim), rank_for(v_density, kv_heads * head_dim)


def svd_factors(weight: torch.Tensor, rank: int, scale: Optional[torch.Tensor] = None):
    """Truncated SVD ``weight [out, d] ~= up [out, r] @ down [r, d]`` (ASVD when `scale` ``[d]`` is given).

    With a scale ``s``, ``weight * s`` is factored and ``down`` is divided by ``s`` again, so input channels with a
    larger typical magnitude are reconstructed more accurately.
    """
    w = weight.detach().double()
    if scale is not None:
        w = w * scale.double()[None, :]
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    up, down = u[:, :rank] * root[None, :], root[:, None] * vh[:rank]
    if scale is not None:
        down = down / scale.double()[None, :]
    return down.to(weight.dtype).contiguous(), up.to(weight.dtype).contiguous()


@dataclass
class CSKVFactors:
    """Per-layer factors: ``layers[i]`` holds ``k_down [r_K, d]``, ``k_up [H_kv*D, r_K]``, ``v_down``, ``v_up``.

    Attributes:
        layers: one dict per decoder layer. metadata: how they were made (ranks, init, training losses...).
    """

    layers: List[Dict[str, torch.Tensor]]
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def k_ranks(self) -> List[int]:
        return [layer["k_down"].shape[0] for layer in self.layers]

    @property
    def v_ranks(self) -> List[int]:
        return [layer["v_down"].shape[0] for layer in self.layers]

    @property
    def total_rank(self) -> int:
        """Latent channels stored per token over all layers (K + V): what the cache size is proportional to."""
        return sum(self.k_ranks) + sum(self.v_ranks)

    def num_parameters(self) -> int:
        return sum(t.numel() for layer in self.layers for t in layer.values())

    @classmethod
    def from_weights(cls, model: torch.nn.Module, k_rank: Union[int, List[int]], v_rank: Union[int, List[int]],
                     act_scale: Optional[List[torch.Tensor]] = None, alpha: float = 0.5) -> "CSKVFactors":
        """SVD (or ASVD with per-layer input magnitudes ``act_scale[i] [d]`` raised to `alpha`) of every layer.

        `k_rank` / `v_rank` are one rank for every layer or a list with one rank per layer."""
        modules = hf_compat.attention_modules(model)
        k_ranks = [k_rank] * len(modules) if isinstance(k_rank, int) else list(k_rank)
        v_ranks = [v_rank] * len(modules) if isinstance(v_rank, int) else list(v_rank)
        if len(k_ranks) != len(modules) or len(v_ranks) != len(modules):
            raise ConfigError(f"CSKVFactors.from_weights: {len(k_ranks)} K / {len(v_ranks)} V ranks given for "
                              f"{len(modules)} layers")
        layers = []
        for index, module in enumerate(modules):
            _, k_proj, v_proj, _ = hf_compat.projections(module)
            scale = None if act_scale is None else act_scale[index].clamp_min(1e-6).pow(alpha)
            k_down, k_up = svd_factors(k_proj.weight, k_ranks[index], scale)
            v_down, v_up = svd_factors(v_proj.weight, v_ranks[index], scale)
            layers.append({"k_down": k_down, "k_up": k_up, "v_down": v_down, "v_up": v_up})
        init = "svd" if act_scale is None else "asvd"
        return cls(layers, {"k_rank": k_rank, "v_rank": v_rank, "init": init, "alpha": alpha})

    def check(self, model: torch.nn.Module) -> None:
        """Raise `ConfigError` when the factors do not fit `model` (layer count or shapes)."""
        modules = hf_compat.attention_modules(model)
        if len(modules) != len(self.layers):
            raise ConfigError(f"CSKV factors have {len(self.layers)} layers, the model has {len(modules)}")
        for index, module in enumerate(modules):
            _, k_proj, v_proj, _ = hf_compat.projections(module)
            layer = self.layers[index]
            for kind, proj in (("k", k_proj), ("v", v_proj)):
                down, up = layer[f"{kind}_down"], layer[f"{kind}_up"]
                if down.shape[1] != proj.in_features or up.shape[0] != proj.out_features:
                    raise ConfigError(
                        f"CSKV factors of layer {index} ({kind}: down {tuple(down.shape)}, up {tuple(up.shape)}) do "
                        f"not fit {kind}_proj {proj.out_features}x{proj.in_features}")


def window_length(tokens: int, window: int, blocks: bool = True) -> int:
    """Tokens kept in full precision out of `tokens` window tokens. With `blocks` (quantised latents, whose key
    scales cover blocks of `window` tokens) old tokens leave in whole blocks, so window..2*window-1 stay; without,
    exactly `window` stay (or all when fewer)."""
    if window == 0:
        return 0
    if not blocks:
        return min(tokens, window)
    return tokens if tokens < 2 * window else window + (tokens - window) % window


@dataclass
class CSKVPress(KVPress):
    """CSKV (Wang et al., "CSKV: Training-Efficient Channel Shrinking for KV Cache in Long-Context Scenarios",
    NeurIPS 2024 ENLSP workshop, arXiv 2409.10593).

    Attributes:
        k_density / v_density: latent rank as a fraction of ``H_kv * D`` (KV reduction ~ 1 - (k + v) / 2); None
            takes them from the factors, else `DEFAULT_DENSITY`.
        window: recent tokens kept as original keys and values (32 in the paper).
        sink: the first tokens of the prompt kept as original keys and values (0 in the paper; default 4).
            Language models park attention on the first token (the "attention sink"); its key is an outlier that
            a low rank fitted to typical tokens reconstructs badly (on SmolLM2 10x the median error in middle
            layers), and every query sees that error. Four tokens cost nothing on long contexts.
        bits: 16 keeps latents in the model dtype; 8 or 4 quantise them (keys per channel over blocks of `window`
            tokens, values per token in groups of `group_size` channels).
        group_size: value quantisation group.
        factors: a `CSKVFactors` or a folder written by `prunekit.kvcache.calibrate` / `cskv_train.save`.
        init: ``"calibrated"`` (factors, or `data` to calibrate from, are required) or ``"svd"`` (an explicit,
            uncalibrated SVD of the weights).
        exact_ratio: fraction of the prompt's tokens whose original keys and values are kept besides their latents:
            per sequence, those the last `exact_window` prompt queries attend to most (summed over all heads,
            pooled over 5 tokens, as SnapKV scores tokens). Retrieval needs the few tokens that hold the answer
            exactly; a low rank fitted to typical tokens blurs them. Each such token costs about
            ``2 * H_kv * D / (r_K + r_V)`` latent tokens of memory.
        exact_window: observation queries that score the tokens for `exact_ratio`.
        exact_by: how `exact_ratio` picks its tokens: ``"attention"`` (the last prompt queries' attention, above) or
            ``"error"`` (the tokens whose keys and values the low rank reconstructs worst, relative error summed
            over K and V; query-free, so it does not depend on what the prompt's end happens to look at: rare
            tokens such as numbers and names, which a rank fitted to typical text blurs, are kept exact).
        data / tokenizer: calibration data for a press without factors (token ids ``[N, T]``, or text with the
            tokenizer); calibrated with `prunekit.kvcache.calibrate`'s defaults when the context first opens.
    """

    k_density: Optional[float] = None
    v_density: Optional[float] = None
    window: int = 32
    sink: int = 4
    bits: int = 16
    group_size: int = 32
    factors: Optional[Union[str, CSKVFactors]] = field(default=None, repr=False)
    init: str = "calibrated"
    exact_ratio: float = 0.0
    exact_window: int = 32
    exact_by: str = "attention"
    data: Any = field(default=None, repr=False, compare=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.factors, str):
            from .cskv_train import load

            self.factors = load(self.factors)
        meta = self.factors.metadata if isinstance(self.factors, CSKVFactors) else {}
        for name in ("k_density", "v_density"):
            if getattr(self, name) is None:
                setattr(self, name, float(meta.get(name, DEFAULT_DENSITY)))
        if self.init not in INITS:
            raise ConfigError(f"CSKVPress.init must be one of {INITS}, got {self.init!r}")
        if self.exact_by not in EXACT_BY:
            raise ConfigError(f"CSKVPress.exact_by must be one of {EXACT_BY}, got {self.exact_by!r}")
        if not 0.0 <= self.exact_ratio < 1.0 or self.exact_window < 1:
            raise ConfigError(f"CSKVPress: exact_ratio must be in [0, 1) and exact_window >= 1, got "
                              f"{self.exact_ratio} / {self.exact_window}")
        for name in ("k_density", "v_density"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"CSKVPress.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.bits not in (4, 8, 16):
            raise ConfigError(f"CSKVPress.bits must be 4, 8 or 16, got {self.bits}")
        if self.window < 0 or (self.bits < 16 and self.window < 1):
            raise ConfigError(f"CSKVPress.window must be >= 0 (>= 1 with quantisation), got {self.window}")
        if self.sink < 0:
            raise ConfigError(f"CSKVPress.sink must be >= 0, got {self.sink}")
        self._rope_memo = None
        self._block_memo = None  # (dtype, device), block_rope's table

    @classmethod
    def from_pretrained(cls, folder: str, **overrides) -> "CSKVPress":
        """The press saved by `prunekit.kvcache.calibrate(..., save_to=folder)`: its factors and its settings."""
        from .cskv_train import load

        factors = load(folder)
        settings = {k: v for k, v in factors.metadata.get("press", {}).items() if k in cls.__dataclass_fields__}
        settings.update(overrides)
        return cls(factors=factors, **settings)

    def settings(self) -> Dict[str, Any]:
        """The layout settings (what a saved factors folder records besides the factors)."""
        return {"k_density": self.k_density, "v_density": self.v_density, "window": self.window, "sink": self.sink,
                "bits": self.bits, "group_size": self.group_size, "exact_ratio": self.exact_ratio,
                "exact_window": self.exact_window, "exact_by": self.exact_by}

    def fixed_nbytes(self) -> int:
        """Bytes the press keeps alive besides the cache (its factors), whatever the context length or batch."""
        return storage_nbytes(self.fixed_tensors())

    def fixed_tensors(self) -> List[torch.Tensor]:
        """What the press keeps alive besides the cache: the factors and, once prepared for a model, the rotary
        table of `block_rope` (``2 * KEY_BLOCK * D/2`` numbers)."""
        if self.factors is None:
            return []
        table = [] if self._block_memo is None or self._block_memo[1] is None else list(self._block_memo[1][:2])
        return [t for layer in self.factors.layers for t in layer.values()] + table

    def prepare(self, model: torch.nn.Module) -> None:
        k_rank, v_rank = latent_ranks(model, self.k_density, self.v_density)
        if self.factors is None and self.init == "svd":
            self.factors = CSKVFactors.from_weights(model, k_rank, v_rank)
        elif self.factors is None and self.data is not None:
            from .calibrated import calibrate

            self.factors = calibrate(model, self.tokenizer, self.data, k_density=self.k_density,
                                     v_density=self.v_density, bits=self.bits, window=self.window, sink=self.sink,
                                     group_size=self.group_size).factors
        elif self.factors is None:
            raise ConfigError(refusal_message(self))
        self.factors.check(model)
        # Factors may spread their ranks unevenly over layers and K/V (cskv_train's adaptive allocation), but they
        # must store exactly the latent channels the densities ask for, so the cache saving is the nominal one.
        budget = (k_rank + v_rank) * len(self.factors.layers)
        if self.factors.total_rank != budget:
            raise ConfigError(
                f"CSKVPress: factors store {self.factors.total_rank} latent channels per token (K ranks "
                f"{self.factors.k_ranks}, V ranks {self.factors.v_ranks}) but k_density {self.k_density} / v_density "
                f"{self.v_density} ask for {k_rank} + {v_rank} per layer, {budget} in all")
        param = next(model.parameters())
        self.factors.layers = [{k: v.to(param.dtype) for k, v in layer.items()} for layer in self.factors.layers]
        self.block_rope(hf_compat.rotary_module(model), param.new_empty(0))

    def compress(self, call: AttentionCall) -> "LatentLayer":
        bsz, length = call.batch, call.q_len
        factors = self.factors.layers[call.layer_idx]
        slots = torch.arange(length, device=call.query.device)
        positions = call.position_ids.expand(bsz, length).clone()
        valid = (torch.ones(bsz, length, dtype=torch.bool, device=slots.device) if call.mask is None
                 else call.allowed(length).expand(bsz, 1, length, length)[:, 0].any(dim=1))
        gap = slots[None, :] - positions
        big = torch.iinfo(gap.dtype).max
        lo = gap.masked_fill(~valid, big).amin(-1)
        hi = gap.masked_fill(~valid, -big).amax(-1)
        offset = torch.where(valid.any(-1), lo, torch.zeros_like(lo))
        explicit = bool((valid.any(-1) & (lo != hi)).any())
        if not explicit:  # padding slots get the positions their slots imply (they are masked anyway)
            positions = slots[None, :] - offset[:, None]
        sink = min(self.sink, length)
        store = {
            "k_sink": call.key[:, :, :sink].clone(), "v_sink": call.value[:, :, :sink].clone(),
            "k_lat": None, "v_lat": None,
            "k_win": call.key[:, :, sink:].clone(), "v_win": call.value[:, :, sink:].clone(),
            "k_lat_win": call.hidden[:, sink:] @ factors["k_down"].T,
            "v_lat_win": call.hidden[:, sink:] @ factors["v_down"].T,
            "pos_win": positions[:, sink:].to(torch.int32),
            "pos_offset": None if explicit else offset,
            "pos_lat": positions[:, :0].to(torch.int32) if explicit else None,
        }
        layer = LatentLayer(length, store, self, factors, call.module, call.rotary)
        n_flush = length - sink - window_length(length - sink, self.window, self.bits < 16)
        layer.flush(n_flush)
        exact = int(round(self.exact_ratio * length))
        if exact and n_flush > 0:
            self._keep_exact(call, store, valid, sink, n_flush, min(exact, n_flush))
        return layer

    def _keep_exact(self, call: AttentionCall, store: Dict[str, Any], valid: torch.Tensor, sink: int, n_lat: int,
                    exact: int) -> None:
        """Store the original keys/values of the `exact` latent tokens the observation queries attend to most."""
        import torch.nn.functional as F

        from .base import Observation

        if self.exact_by == "error":
            mass = self._reconstruction_error(call)[:, sink:sink + n_lat]
        else:
            probs = Observation.from_call(call, self.exact_window).probs()  # [B, H, w, T]
            mass = probs.sum(dim=(1, 2))[:, sink:sink + n_lat]  # [B, n_lat]: attention received, all heads
            mass = F.avg_pool1d(mass[:, None], 5, stride=1, padding=2, count_include_pad=False)[:, 0]
        mass = mass.masked_fill(~valid[:, sink:sink + n_lat], float("-inf"))
        index = mass.topk(exact, dim=-1).indices.sort(dim=-1).values  # [B, e] latent indices
        slots = (index + sink)[:, None, :, None].expand(call.batch, call.num_kv_heads, exact, call.key.shape[-1])
        store["k_exact"], store["v_exact"] = call.key.gather(2, slots), call.value.gather(2, slots)
        store["exact_idx"] = index.to(torch.int32)

    def _reconstruction_error(self, call: AttentionCall) -> torch.Tensor:
        """Per-token relative squared error of the rank-r keys and values (pre-RoPE; RoPE keeps norms), ``[B, T]``:
        ``|k - up_K down_K x|^2 / mean|k|^2 + |v - up_V down_V x|^2 / mean|v|^2``."""
        factors = self.factors.layers[call.layer_idx]
        _, k_proj, v_proj, _ = hf_compat.projections(call.module)
        total = 0.0
        for kind, proj in (("k", k_proj), ("v", v_proj)):
            exact = call.hidden @ proj.weight.T  # biases cancel in the difference
            approx = (call.hidden @ factors[f"{kind}_down"].T) @ factors[f"{kind}_up"].T
            err = (exact - approx).pow(2).sum(-1)  # [B, T]
            total = total + err / exact.pow(2).sum(-1).mean(-1, keepdim=True).clamp_min(1e-12)
        return total

    def rope_for(self, call: AttentionCall, positions: torch.Tensor, like: torch.Tensor, offset_mode: bool):
        """``(cos, sin)`` for ``positions [B, T]``, memoised across the layers of one forward (offset mode)."""
        key = (call.cache_position[0].item(), tuple(positions.shape), positions[:, :1].tolist(),
               positions[:, -1:].tolist())
        if not offset_mode or self._rope_memo is None or self._rope_memo[0] != key:
            self._rope_memo = (key, call.rope_at(like, positions.long()))
        return self._rope_memo[1]

    def block_rope(self, rotary: torch.nn.Module, like: torch.Tensor):
        """``(cos, sin, scaling)``: the model's rotary table for offsets ``0..KEY_BLOCK-1`` in the half form
        (``[KEY_BLOCK, D/2]`` each), computed when the context opens (`prepare`) and counted in `fixed_nbytes`;
        None when the model's rotary embedding is not the pairwise ``rotate_half`` form (its cos not two equal
        halves), so callers fall back to per-token angles."""
        memo = getattr(self, "_block_memo", None)
        if memo is not None and memo[0] == (like.dtype, like.device):
            return memo[1]
        cos, sin = rotary(like, position_ids=torch.arange(KEY_BLOCK, device=like.device)[None])
        half = cos.shape[-1] // 2
        table = None
        if torch.equal(cos[..., :half], cos[..., half:]) and torch.equal(sin[..., :half], sin[..., half:]):
            scaling = float(getattr(rotary, "attention_scaling", 1.0) or 1.0)
            table = (cos[0, :, :half].contiguous(), sin[0, :, :half].contiguous(), scaling)
        self._block_memo = ((like.dtype, like.device), table)
        return table

    @property
    def nominal_saving(self) -> float:
        """KV saving on long contexts vs a 16-bit cache (window neglected)."""
        return 1.0 - (self.k_density + self.v_density) / 2.0 * min(self.bits, 16) / 16.0


class LatentLayer(CompressedLayer):
    """Bi-branch storage: the first slots' original post-RoPE ``k_sink, v_sink [B, H_kv, S, D]``, then latents
    ``k_lat [B, Tc, r_K]``, ``v_lat [B, Tc, r_V]`` (tensors or `QuantizedTensor`) for
    the oldest ``Tc`` slots, and for the window slots the original post-RoPE ``k_win, v_win [B, H_kv, Tw, D]`` plus
    their latents ``k_lat_win, v_lat_win [B, Tw, r]`` (moved to the latents when flushed) and rotary positions
    ``pos_win [B, Tw]``. Latent rotary positions are ``slot - pos_offset [B]`` (latent slots start after the sink)
    or explicit ``pos_lat [B, Tc]``; attention runs over the slots in order: sink, latents, window.
    """

    def __init__(self, length: int, store: Dict[str, Any], press: CSKVPress, factors: Dict[str, torch.Tensor],
                 module: torch.nn.Module, rotary: torch.nn.Module):
        super().__init__(length, store)
        self.press = press
        self.factors = factors
        self.module, self.rotary = module, rotary
        self.frozen = False  # True once tokens were added outside the press context: no more flushing

    @property
    def n_latent(self) -> int:
        k_lat = self.store["k_lat"]
        if k_lat is None:
            return 0
        if isinstance(k_lat, QuantizedTensor):
            return k_lat.tokens
        return k_lat.length if isinstance(k_lat, TokenBuffer) else k_lat.shape[1]

    @property
    def n_sink(self) -> int:
        return self.store["k_sink"].shape[2]

    def _pack(self, latents: torch.Tensor, kind: str):
        press = self.press
        if press.bits >= 16:
            return TokenBuffer(latents, dim=1)
        if kind == "k":
            return quantize(latents, press.bits, press.window, axis=-2)
        return quantize(latents, press.bits, press.group_size, axis=-1)

    def flush(self, n: int) -> None:
        """Move the oldest `n` window tokens into the latent store."""
        if n <= 0:
            return
        s = self.store
        start = self.n_sink + self.n_latent
        for kind in ("k", "v"):
            block = self._pack(s[f"{kind}_lat_win"][:, :n], kind)
            old = s[f"{kind}_lat"]
            if old is None:
                s[f"{kind}_lat"] = block
            elif isinstance(block, QuantizedTensor):
                s[f"{kind}_lat"] = cat_tokens(old, block)
            else:
                old.append(block.view())
            s[f"{kind}_lat_win"] = s[f"{kind}_lat_win"][:, n:].clone()
            s[f"{kind}_win"] = s[f"{kind}_win"][:, :, n:].clone()
        block_pos = s["pos_win"][:, :n]
        if s["pos_offset"] is not None:
            slots = torch.arange(start, start + n, device=block_pos.device)
            if not bool((block_pos == slots[None, :] - s["pos_offset"][:, None]).all()):
                first = torch.arange(self.n_sink, start, device=block_pos.device)[None, :] - s["pos_offset"][:, None]
                s["pos_lat"], s["pos_offset"] = first.to(torch.int32), None
        if s["pos_offset"] is None:
            s["pos_lat"] = torch.cat([s["pos_lat"], block_pos], dim=1)
        s["pos_win"] = s["pos_win"][:, n:].clone()

    def _latents(self, kind: str, dtype: torch.dtype) -> torch.Tensor:
        value = self.store[f"{kind}_lat"]
        if isinstance(value, QuantizedTensor):
            return value.dequantize(dtype)
        return value.view() if isinstance(value, TokenBuffer) else value

    def _latent_positions(self, device) -> torch.Tensor:
        s = self.store
        if s["pos_offset"] is None:
            return s["pos_lat"]
        return torch.arange(self.n_sink, self.n_sink + self.n_latent, device=device)[None, :] - s["pos_offset"][:, None]

    def _rebuild_keys(self, latents: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Post-RoPE keys ``[B, H_kv, n, D]`` of latents ``[B, n, r_K]`` at rotations ``cos, sin [B, n, D]``."""
        _, k_proj, _, _ = hf_compat.projections(self.module)
        keys = latents @ self.factors["k_up"].T
        if k_proj.bias is not None:
            keys = keys + k_proj.bias
        bsz, n = latents.shape[:2]
        keys = keys.view(bsz, n, -1, self.module.head_dim).transpose(1, 2)
        return hf_compat.apply_rope(self.module, keys, cos, sin)

    def _latent_logits_blockwise(self, call: AttentionCall, q: torch.Tensor, latents: torch.Tensor,
                                 table) -> torch.Tensor:
        """Logits ``[B, H_kv, G*q, n]`` of queries ``q [B, H_kv, G*q, D]`` over the latent keys at contiguous
        positions, with no rotary angle computed per token.

        RoPE rotations compose, ``R(p0 + t) = R(p0) R(t)``, so ``q . R(p0 + t) k_t = (R(p0)^T q) . (R(t) k_t)``: each
        block of `KEY_BLOCK` latents starting at position ``p0`` rotates its rebuilt pre-RoPE keys by the press's
        fixed table ``R(t)``, ``t < KEY_BLOCK`` (`CSKVPress.block_rope`), and the few query rows by ``-p0``.
        """
        s = self.store
        cos_t, sin_t, scaling = table  # [KEY_BLOCK, D/2] each (the model's attention scaling folded in)
        bsz, kv_heads, rows, dim = q.shape
        n_lat = latents.shape[1]
        _, k_proj, _, _ = hf_compat.projections(self.module)
        first = (self.n_sink - s["pos_offset"]).to(q.device)  # [B] rotary position of latent 0
        starts = torch.arange(0, n_lat, KEY_BLOCK, device=q.device)
        cos_b, sin_b = call.rope_at(q, (first[:, None] + starts[None, :]).long())  # [B, nb, D]
        half = dim // 2
        cos_b, sin_b = cos_b[..., :half] / scaling, sin_b[..., :half] / scaling
        out = q.new_empty(bsz, kv_heads, rows, n_lat)
        for block, start in enumerate(range(0, n_lat, KEY_BLOCK)):
            stop = min(n_lat, start + KEY_BLOCK)
            keys = latents[:, start:stop] @ self.factors["k_up"].T
            if k_proj.bias is not None:
                keys = keys + k_proj.bias
            keys = keys.view(bsz, stop - start, kv_heads, dim).transpose(1, 2)  # [B, H_kv, b, D] pre-RoPE
            keys = rotate_pairs(keys, cos_t[:stop - start], sin_t[:stop - start])
            q_back = rotate_pairs(q, cos_b[:, None, block:block + 1], -sin_b[:, None, block:block + 1])
            out[..., start:stop] = q_back @ keys.transpose(2, 3)
        return out

    def _rebuild_values(self, latents: torch.Tensor) -> torch.Tensor:
        _, _, v_proj, _ = hf_compat.projections(self.module)
        values = latents @ self.factors["v_up"].T
        if v_proj.bias is not None:
            values = values + v_proj.bias
        bsz, n = latents.shape[:2]
        return values.view(bsz, n, -1, self.module.head_dim).transpose(1, 2)

    def full_kv(self):
        """Sink, rebuilt latent and window keys/values ``[B, H_kv, L, D]`` (temporaries)."""
        s = self.store
        keys, values = [s["k_sink"]], [s["v_sink"]]
        if self.n_latent:
            dtype = s["k_sink"].dtype
            positions = self._latent_positions(s["k_sink"].device).long()
            cos, sin = self.rotary(s["k_sink"], position_ids=positions)
            lat_k = self._rebuild_keys(self._latents("k", dtype), cos, sin)
            lat_v = self._rebuild_values(self._latents("v", dtype))
            if s.get("exact_idx") is not None:
                where = s["exact_idx"].long()[:, None, :, None].expand(*s["k_exact"].shape)
                lat_k, lat_v = lat_k.scatter(2, where, s["k_exact"]), lat_v.scatter(2, where, s["v_exact"])
            keys.append(lat_k)
            values.append(lat_v)
        keys.append(s["k_win"])
        values.append(s["v_win"])
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)

    def materialize(self, key: torch.Tensor, value: torch.Tensor):
        """Outside the press context the new tokens stay in the full-precision window (their attention inputs, which
        the latents need, are not available there), and the window stops flushing."""
        s = self.store
        self.frozen = True
        s["k_win"] = torch.cat([s["k_win"], key], dim=2)
        s["v_win"] = torch.cat([s["v_win"], value], dim=2)
        self.length += key.shape[2]
        return self.full_kv()

    def crop_tokens(self, length: int) -> None:
        s = self.store
        n_win = s["k_win"].shape[2]
        drop = self._tokens_to_drop(length, n_win, "a CSKV cache layer", "of its full-precision window")
        if not drop:
            return
        keep = n_win - drop
        s["k_win"], s["v_win"] = s["k_win"][:, :, :keep].clone(), s["v_win"][:, :, :keep].clone()
        for name in ("k_lat_win", "v_lat_win", "pos_win"):
            s[name] = s[name][:, :keep].clone()
        self.length -= drop
        if s["k_lat_win"].shape[1] == keep:  # every token added outside the context is gone: flush again
            self.frozen = False

    def attend(self, call: AttentionCall) -> torch.Tensor:
        s, f = self.store, self.factors
        bsz, heads, q_len, dim = call.query.shape
        kv_heads, groups = call.num_kv_heads, call.groups
        s["k_win"] = torch.cat([s["k_win"], call.key], dim=2)
        s["v_win"] = torch.cat([s["v_win"], call.value], dim=2)
        if not self.frozen:
            s["k_lat_win"] = torch.cat([s["k_lat_win"], call.hidden @ f["k_down"].T], dim=1)
            s["v_lat_win"] = torch.cat([s["v_lat_win"], call.hidden @ f["v_down"].T], dim=1)
            s["pos_win"] = torch.cat([s["pos_win"], call.position_ids.expand(bsz, q_len).to(torch.int32)], dim=1)
        self.length += q_len
        n_sink, n_lat, n_win = self.n_sink, self.n_latent, s["k_win"].shape[2]
        q = call.query.reshape(bsz, kv_heads, groups * q_len, dim)
        parts = [q @ s["k_win"].transpose(2, 3)]
        _, _, v_proj, _ = hf_compat.projections(call.module)
        if n_lat:
            latents = self._latents("k", q.dtype)
            table = self.press.block_rope(call.rotary, q) if s["pos_offset"] is not None else None
            if table is not None:
                lat_logits = self._latent_logits_blockwise(call, q, latents, table)
            else:
                positions = self._latent_positions(q.device)
                cos, sin = self.press.rope_for(call, positions, q, False)
                lat_logits = q.new_empty(bsz, kv_heads, groups * q_len, n_lat)
                for start in range(0, n_lat, KEY_BLOCK):  # blockwise: temporaries stay in the CPU caches
                    stop = min(n_lat, start + KEY_BLOCK)
                    keys = self._rebuild_keys(latents[:, start:stop], cos[:, start:stop], sin[:, start:stop])
                    lat_logits[..., start:stop] = q @ keys.transpose(2, 3)
            exact = s.get("exact_idx")
            if exact is not None:  # exact tokens: their original keys replace the rebuilt ones
                lat_logits.scatter_(3, exact.long()[:, None, None, :].expand(bsz, kv_heads, groups * q_len, -1),
                                    q @ s["k_exact"].transpose(2, 3))
            parts.insert(0, lat_logits)
        if n_sink:
            parts.insert(0, q @ s["k_sink"].transpose(2, 3))
        logits = torch.cat(parts, dim=-1).view(bsz, kv_heads, groups, q_len, self.length) * call.scaling
        if not call.attends_everything():
            allowed = call.allowed(self.length)[:, :, None]  # [B|1, 1, 1, q, L]
            logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
        probs = logits.softmax(-1, dtype=torch.float32).to(q.dtype).view(bsz, kv_heads, groups * q_len, -1)
        out = probs[..., n_sink + n_lat:] @ s["v_win"]
        if n_sink:
            out = out + probs[..., :n_sink] @ s["v_sink"]
        if n_lat:
            p_lat = probs[..., n_sink:n_sink + n_lat]
            exact = s.get("exact_idx")
            if exact is not None:  # exact tokens: original values, taken out of the latent path
                where = exact.long()[:, None, None, :].expand(bsz, kv_heads, groups * q_len, -1)
                out = out + p_lat.gather(3, where) @ s["v_exact"]
                p_lat = p_lat.scatter(3, where, 0.0)
            mixed = p_lat @ self._latents("v", q.dtype)[:, None]  # [B, H_kv, G*q, r_V]
            out = out + torch.einsum("bhnr,hdr->bhnd", mixed, f["v_up"].view(kv_heads, dim, -1))
            if v_proj.bias is not None:
                out = out + p_lat.sum(-1, keepdim=True) * v_proj.bias.view(1, kv_heads, 1, dim)
        if not self.frozen:
            self.flush(n_win - window_length(n_win, self.press.window, self.press.bits < 16))
        return out.view(bsz, heads, q_len, dim)
