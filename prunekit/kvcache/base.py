"""Shared base of the KV-cache presses: the method scores, the base selects and stores.

A press is used as a context manager around plain ``model(...)`` / ``model.generate(...)`` calls::

    press = ThinKPress(key_ratio=0.4)
    with press(model):
        out = model.generate(**inputs, max_new_tokens=16)

Inside the block every attention layer runs through `KVPress.attend`: the first forward into an empty cache layer
(the *prefill*) computes attention exactly as the model does, then `KVPress.compress` turns the layer's keys and
values into a `CompressedLayer` that replaces the cache layer; later forwards (decoding, or scoring a continuation)
append their tokens to that layer and attend over its compact storage. After the block, the filled cache still
serves transformers' own attention (`CompressedLayer.update` returns full-width keys and values equivalent to the
compact ones, as temporaries), so a cache compressed inside the block can be decoded outside it, as kvpress's
text-generation pipeline does; tokens added there are stored uncompressed, and ``cache.crop(n)`` removes them.

Memory is accounted as the summed storage bytes (``untyped_storage().nbytes()``, deduplicated) of every tensor a cache
holds (`cache_nbytes`), never from a formula.

`SelectPress` + `SelectedKVLayer` implement the storage shared by ThinK and token eviction: a subclass scores tokens
and channels from an `Observation` of the last prefill queries; the base keeps the top-scoring ones per key-value
head and stores only those (old keys ``[B, H_kv, n, k]`` plus channel indices), with the most recent tokens and every
token seen after the prefill kept at full width.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional

import torch

from ..errors import UnsupportedOperationError
from . import hf_compat
from .hf_compat import AttentionCall


def storage_nbytes(tensors: Iterable[Optional[torch.Tensor]]) -> int:
    """Bytes of real storage behind `tensors`, each storage counted once (views share their base's storage)."""
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), str(tensor.device), storage.nbytes())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def cache_nbytes(cache) -> int:
    """Bytes a transformers ``Cache`` actually holds: summed, deduplicated storage of all its layers' tensors."""
    tensors: List[torch.Tensor] = []
    for layer in cache.layers:
        tensors.extend(hf_compat.layer_tensors(layer))
    return storage_nbytes(tensors)


def _index_batch(value: Any, indices: torch.Tensor) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.index_select(0, indices.to(value.device))
    return value.index_batch(indices)


class CompressedLayer(hf_compat.CacheLayerBase):
    """A cache layer holding named, batch-first tensors (or objects with ``tensors()`` / ``index_batch()``).

    Attributes:
        store: name -> tensor; everything the layer keeps lives here, so accounting and batch reordering see it all.
    """

    def __init__(self, length: int, store: Dict[str, Any]):
        super().__init__(length)
        self.store = store

    def tensors(self) -> Iterator[torch.Tensor]:
        for value in self.store.values():
            if isinstance(value, torch.Tensor):
                yield value
            elif value is not None:
                yield from value.tensors()

    def nbytes(self) -> int:
        return storage_nbytes(self.tensors())

    def index_batch(self, indices: torch.Tensor) -> None:
        self.store = {name: _index_batch(value, indices) for name, value in self.store.items()}

    def batch_size(self) -> int:
        return next(iter(self.tensors())).shape[0]

    def attend(self, call: AttentionCall) -> torch.Tensor:  # pragma: no cover - abstract
        """Append the call's tokens and return attention output ``[B, H, T, D]``."""
        raise NotImplementedError

    # -- use outside the press context (transformers' own attention, e.g. kvpress's pipeline decoding) ----------
    def materialize(self, key: torch.Tensor, value: torch.Tensor):
        """Append ``key, value [B, H_kv, q, D]`` and return full-width keys and values ``[B, H_kv, L, D]`` that give
        the same attention as the compressed storage (temporaries: the layer keeps its compact storage)."""
        raise UnsupportedOperationError(
            f"prunekit.kvcache: a {type(self).__name__} can only be read inside the press context that filled it "
            f"(with press(model): ...)")

    def full_kv(self):  # pragma: no cover - abstract
        """Full-width ``(keys, values)`` equivalent to the stored ones, without appending."""
        raise NotImplementedError

    def crop_tokens(self, length: int) -> None:
        """Keep the first `length` tokens (only tokens stored at full width, i.e. added after the prefill, can go)."""
        raise UnsupportedOperationError(f"prunekit.kvcache: a {type(self).__name__} cannot be cropped")

    def _tokens_to_drop(self, length: int, removable: int, layer: str, removable_what: str) -> int:
        """How many trailing tokens `crop_tokens(length)` removes (0: nothing to do), checked against `removable`.

        Args:
            length: the token count to keep.
            removable: how many trailing tokens this layer can remove (those it stores uncompressed).
            layer: the layer's name in the error, e.g. ``"a ThinK cache layer"``.
            removable_what: what the removable tokens are, in the error, e.g. ``"kept at full width"``.
        Raises:
            UnsupportedOperationError: cropping would remove more than `removable` tokens.
        """
        drop = self.length - int(length)
        if drop <= 0:
            return 0
        if drop > removable:
            raise UnsupportedOperationError(
                f"prunekit.kvcache: cannot crop {layer} of {self.length} tokens to {length}: only the "
                f"{removable} tokens {removable_what} can be removed")
        return drop

    def update(self, key_states, value_states, cache_kwargs=None):
        """transformers' attention calls this outside the press context: see `materialize`."""
        return self.materialize(key_states, value_states)

    def crop(self, max_length: int) -> None:
        self.crop_tokens(max_length if max_length >= 0 else self.length + max_length)

    # ``layer.keys = layer.keys[:, :, :n]`` (kvpress's pipeline removing an answer) crops to n tokens
    @property
    def keys(self):
        return self.full_kv()[0]

    @keys.setter
    def keys(self, value) -> None:
        if value is not None and hasattr(self, "store"):
            self.crop_tokens(value.shape[-2])

    @property
    def values(self):
        return self.full_kv()[1]

    @values.setter
    def values(self, value) -> None:
        if value is not None and hasattr(self, "store"):
            self.crop_tokens(value.shape[-2])


class KVPress:
    """Base of all presses: a context manager that routes attention through `attend`.

    Subclasses implement `compress` (and optionally `prepare`, called once on entering the context).
    """

    def prepare(self, model: torch.nn.Module) -> None:
        """Hook run when the context opens (e.g. build factors from the model's weights)."""

    def compress(self, call: AttentionCall) -> CompressedLayer:  # pragma: no cover - abstract
        """Build the compressed cache layer from a prefill call (keys and values of the whole prompt)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def __call__(self, model: torch.nn.Module) -> Iterator["KVPress"]:
        hf_compat.attention_modules(model)  # clear error for unsupported architectures / versions
        self.prepare(model)
        with hf_compat.patched_attention(model, self.attend):
            yield self

    def attend(self, call: AttentionCall) -> torch.Tensor:
        """Prefill: exact attention, then compress into the cache. Later calls: the compressed layer attends."""
        if call.cache is None:
            return call.hf_attention(call.key, call.value)
        layer = hf_compat.cache_layer(call.cache, call.layer_idx)
        if isinstance(layer, CompressedLayer):
            return layer.attend(call)
        if not hf_compat.is_empty_layer(layer):
            raise UnsupportedOperationError(
                f"prunekit.kvcache.{type(self).__name__}: cache layer {call.layer_idx} already holds uncompressed "
                f"tokens; prefill with an empty cache inside the press context")
        out = call.hf_attention(call.key, call.value)
        compressed = self.compress(call)
        compressed.is_sliding = getattr(layer, "is_sliding", False)
        hf_compat.set_cache_layer(call.cache, call.layer_idx, compressed)
        return out

    @staticmethod
    def new_cache(model: torch.nn.Module):
        """An empty cache for `model`; pass it as ``past_key_values`` to keep the compressed cache afterwards."""
        return hf_compat.new_cache(model)


# ------------------------------------------------------------------------------------------------ observation window

@dataclass
class Observation:
    """Prefill statistics from the last `window` real (non-padding) queries of each sequence.

    Attributes:
        query: ``[B, H, w, D]`` post-RoPE queries of the observation rows.
        weight: ``[B, w]`` 1.0 for real observation rows, 0.0 for fillers (sequences shorter than the window).
        keys / values: ``[B, H_kv, T, D]`` post-RoPE keys and values of the prompt.
        key_valid: ``[B, T]`` False at padding slots.
        allowed: ``[B|1, 1, w, T]`` which slots each observation row may attend.
        scaling: attention scale.
    """

    query: torch.Tensor
    weight: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    key_valid: torch.Tensor
    allowed: torch.Tensor
    scaling: float
    _probs: Optional[torch.Tensor] = None

    @classmethod
    def from_call(cls, call: AttentionCall, window: int) -> "Observation":
        bsz, heads, length, dim = call.query.shape
        w = max(1, min(window, length))
        device = call.query.device
        if call.mask is None:  # no padding: the last w rows, causal
            key_valid = torch.ones(bsz, length, dtype=torch.bool, device=device)
            rows = torch.arange(length - w, length, device=device).expand(bsz, w)
            weight = torch.ones(bsz, w, device=device)
            slots = torch.arange(length, device=device)
            allowed = (slots[None, :] <= rows[0][:, None])[None, None]
        else:
            allowed_all = call.allowed(length).expand(bsz, 1, length, length)
            key_valid = allowed_all[:, 0].any(dim=1)  # [B, T]: a padding slot is attended by no row
            after = key_valid.flip(-1).long().cumsum(-1).flip(-1)  # valid rows at or after each row
            chosen = key_valid & (after <= w)
            rank = chosen.long() * (length + 1) + torch.arange(length, device=device)
            rows = rank.topk(w, dim=-1).indices.sort(dim=-1).values  # [B, w]
            weight = chosen.gather(1, rows).to(call.query.dtype)
            allowed = allowed_all.gather(2, rows[:, None, :, None].expand(bsz, 1, w, length))
        query = call.query.gather(2, rows[:, None, :, None].expand(bsz, heads, w, dim))
        return cls(query, weight, call.key, call.value, key_valid, allowed, call.scaling)

    @property
    def groups(self) -> int:
        return self.query.shape[1] // self.keys.shape[1]

    def probs(self) -> torch.Tensor:
        """Attention probabilities of the observation rows over all prompt slots, ``[B, H, w, T]`` (cached)."""
        if self._probs is None:
            bsz, heads, w, dim = self.query.shape
            kv_heads, length = self.keys.shape[1], self.keys.shape[2]
            q = self.query.reshape(bsz, kv_heads, self.groups * w, dim)
            logits = (q @ self.keys.transpose(2, 3)).view(bsz, kv_heads, self.groups, w, length) * self.scaling
            logits = logits.masked_fill(~self.allowed[:, :, None], torch.finfo(logits.dtype).min)
            self._probs = logits.softmax(-1, dtype=torch.float32).view(bsz, heads, w, length)
        return self._probs


@dataclass
class OldTokens:
    """The prompt tokens that are candidates for channel pruning (all but the most recent).

    Attributes:
        keys / values: ``[B, H_kv, n, D]``. slots: ``[B, H_kv, n]`` their cache slots (None: ``0..n-1``).
        valid: ``[B, H_kv, n]`` False at padding.
    """

    keys: torch.Tensor
    values: torch.Tensor
    slots: Optional[torch.Tensor]
    valid: torch.Tensor


def gather_tokens(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``x [B, H, T, D]`` at ``slots [B, H, n]`` -> ``[B, H, n, D]``."""
    return x.gather(2, slots[..., None].expand(*slots.shape, x.shape[-1]))


def gather_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, H, n, D]`` at channel ``index [B, H, k]`` -> ``[B, H, n, k]``."""
    return x.gather(3, index[:, :, None, :].expand(x.shape[0], x.shape[1], x.shape[2], index.shape[-1]))


def top_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` largest entries along the last dim, in ascending index order."""
    return scores.topk(k, dim=-1).indices.sort(dim=-1).values


class SelectPress(KVPress):
    """Keep a subset of tokens and of key/value channels per key-value head, stored compactly.

    Subclasses provide the scores (higher = keep) and budgets; attributes ``recent_size`` (prompt tokens kept in full)
    and ``window_size`` (observation queries) are read from the subclass.
    """

    recent_size: int = 32
    window_size: int = 32

    def token_budget(self, length: int) -> Optional[int]:
        """Prompt tokens to keep in total, recent ones included (None: keep every token)."""
        return None

    def score_tokens(self, obs: Observation) -> torch.Tensor:  # pragma: no cover - only with a token budget
        """``[B, H_kv, T]`` token scores."""
        raise NotImplementedError

    def channel_budget(self, kind: str, head_dim: int) -> int:
        """Channels of kind ``"key"`` / ``"value"`` to keep per head (``head_dim``: no pruning)."""
        return head_dim

    def score_channels(self, kind: str, obs: Observation, old: OldTokens) -> torch.Tensor:  # pragma: no cover
        """``[B, H_kv, D]`` channel scores of kind ``"key"`` / ``"value"``."""
        raise NotImplementedError

    def compress(self, call: AttentionCall) -> "SelectedKVLayer":
        bsz, kv_heads, length, dim = call.key.shape
        recent = min(self.recent_size, length)
        n_old = length - recent
        obs = Observation.from_call(call, self.window_size)
        slots = None
        keys, values = call.key[:, :, :n_old], call.value[:, :, :n_old]
        valid = obs.key_valid[:, None, :n_old].expand(bsz, kv_heads, n_old)
        budget = self.token_budget(length)
        if budget is not None and n_old > 0 and budget - recent < n_old:
            keep = max(int(budget) - recent, 0)
            scores = self.score_tokens(obs)[..., :n_old].masked_fill(~valid, float("-inf"))
            slots = top_sorted(scores, keep)
            keys, values, valid = gather_tokens(keys, slots), gather_tokens(values, slots), valid.gather(2, slots)
        old = OldTokens(keys, values, slots, valid)
        index = {}
        for kind in ("key", "value"):
            keep = self.channel_budget(kind, dim)
            index[kind] = None
            if keep < dim and n_old > 0:
                index[kind] = top_sorted(self.score_channels(kind, obs, old), keep)
        k_old = gather_channels(keys, index["key"]) if index["key"] is not None else keys.clone()
        v_old = gather_channels(values, index["value"]) if index["value"] is not None else values.clone()
        small = torch.int16 if dim <= torch.iinfo(torch.int16).max else torch.int32
        store = {
            "k_old": k_old, "v_old": v_old,
            "k_idx": None if index["key"] is None else index["key"].to(small),
            "v_idx": None if index["value"] is None else index["value"].to(small),
            "slots": None if slots is None else slots.to(torch.int32),
            "k_new": call.key[:, :, n_old:].clone(), "v_new": call.value[:, :, n_old:].clone(),
        }
        return SelectedKVLayer(length, store)


class SelectedKVLayer(CompressedLayer):
    """Compact storage of selected tokens and channels, plus a full-width part for recent and new tokens.

    Store: ``k_old [B, H_kv, n, k]`` (channels ``k_idx [B, H_kv, k]``, or all when None), ``v_old [B, H_kv, n, kv]``
    (``v_idx``), ``slots [B, H_kv, n]`` cache slots of old tokens (None: ``0..n-1``), ``k_new, v_new
    [B, H_kv, m, D]`` for the last ``m`` slots. Attention over old tokens uses the queries restricted to the kept
    key channels: ``q[..., k_idx] · k_old^T``; value channels that were dropped contribute zero output.
    """

    def attend(self, call: AttentionCall) -> torch.Tensor:
        s = self.store
        s["k_new"] = torch.cat([s["k_new"], call.key], dim=2)
        s["v_new"] = torch.cat([s["v_new"], call.value], dim=2)
        self.length += call.q_len
        bsz, heads, q_len, dim = call.query.shape
        kv_heads, groups = call.num_kv_heads, call.groups
        n_old, n_new = s["k_old"].shape[2], s["k_new"].shape[2]
        q = call.query.reshape(bsz, kv_heads, groups * q_len, dim)
        q_old = q if s["k_idx"] is None else gather_channels(q, s["k_idx"].long())
        logits = torch.cat([q_old @ s["k_old"].transpose(2, 3), q @ s["k_new"].transpose(2, 3)], dim=-1)
        logits = logits.view(bsz, kv_heads, groups, q_len, n_old + n_new) * call.scaling
        if not call.attends_everything():
            allowed = call.allowed(self.length)  # [B|1, 1, q, L]
            allowed_new = allowed[..., self.length - n_new:]
            if s["slots"] is None:
                allowed_old = allowed[..., :n_old]
            else:
                full = allowed.expand(bsz, kv_heads, q_len, self.length)
                allowed_old = full.gather(3, s["slots"].long()[:, :, None, :].expand(bsz, kv_heads, q_len, n_old))
            allowed_old = allowed_old.expand(bsz, kv_heads, q_len, n_old)
            keep = torch.cat([allowed_old, allowed_new.expand(bsz, kv_heads, q_len, n_new)], dim=-1)[:, :, None]
            logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
        probs = logits.softmax(-1, dtype=torch.float32).to(call.query.dtype).view(bsz, kv_heads, groups * q_len, -1)
        out_old = probs[..., :n_old] @ s["v_old"]
        if s["v_idx"] is not None:
            index = s["v_idx"].long()[:, :, None, :].expand(*out_old.shape)
            out_old = torch.zeros(bsz, kv_heads, groups * q_len, dim, dtype=out_old.dtype,
                                  device=out_old.device).scatter_(3, index, out_old)
        out = out_old + probs[..., n_old:] @ s["v_new"]
        return out.view(bsz, heads, q_len, dim)

    def full_kv(self):
        s = self.store
        if s["slots"] is not None:
            raise UnsupportedOperationError(
                "prunekit.kvcache: a cache with evicted tokens can only be read inside the press context that "
                "filled it (its slots do not line up with transformers' attention mask)")
        dim = s["k_new"].shape[-1]
        old = []
        for kind in ("k", "v"):
            stored, index = s[f"{kind}_old"], s[f"{kind}_idx"]
            if index is None:
                old.append(stored)
            else:
                full = stored.new_zeros(*stored.shape[:3], dim)
                old.append(full.scatter_(3, index.long()[:, :, None, :].expand(*stored.shape), stored))
        return torch.cat([old[0], s["k_new"]], dim=2), torch.cat([old[1], s["v_new"]], dim=2)

    def materialize(self, key: torch.Tensor, value: torch.Tensor):
        s = self.store
        s["k_new"] = torch.cat([s["k_new"], key], dim=2)
        s["v_new"] = torch.cat([s["v_new"], value], dim=2)
        self.length += key.shape[2]
        return self.full_kv()

    def crop_tokens(self, length: int) -> None:
        s = self.store
        drop = self._tokens_to_drop(length, s["k_new"].shape[2], "this cache layer", "kept at full width")
        if not drop:
            return
        keep = s["k_new"].shape[2] - drop
        s["k_new"], s["v_new"] = s["k_new"][:, :, :keep].clone(), s["v_new"][:, :, :keep].clone()
        self.length -= drop
