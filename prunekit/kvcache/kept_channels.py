"""`KeptChannelLayer`: ThinK's key cache stored as the kept channels, attended over those channels only.

Every token's key is split per key-value head into its kept channels ``k_idx`` (stored for all tokens) and the other
channels ``r_idx`` (stored only for the last ``m`` tokens: the unpruned recent window and every token added after the
prefill). Attention over all ``L`` tokens then runs on the kept channels, with the queries gathered to the same
channels and the values at full width (``scaled_dot_product_attention`` or two matmuls, see `KeptChannelLayer`)::

    logits[s] = q[k_idx] . k_kept[s]  +  (s in the last m ? q[r_idx] . k_rest[s] : 0)

the second term entering as an additive ``[B, H_kv, G*q, L]`` term (zero on pruned tokens). This equals
attention over keys whose pruned channels are zero-filled (ThinK's ``recover_cache``) without building them, and
reads ``k/D`` of the key bytes. The query heads sharing a key-value head are stacked as rows (``G*q`` rows per
key-value head), so no key or value is repeated for grouped-query attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import CompressedLayer, gather_channels
from .buffers import TokenBuffer
from .hf_compat import AttentionCall


def scatter_channels(parts, dim: int) -> torch.Tensor:
    """Full-width ``[B, H, n, dim]`` keys from ``(values [B, H, n, k], index [B, H, k])`` pairs (zeros elsewhere)."""
    first = parts[0][0]
    out = first.new_zeros(first.shape[0], first.shape[1], first.shape[2], dim)
    for values, index in parts:
        out.scatter_(3, index.long()[:, :, None, :].expand(*values.shape), values)
    return out


class KeptChannelLayer(CompressedLayer):
    """Store: ``k_kept [B, H_kv, L, k]``, ``v [B, H_kv, L, D]`` and ``k_rest [B, H_kv, m, D-k]`` (`TokenBuffer`s),
    channel indices ``k_idx [B, H_kv, k]`` and ``r_idx [B, H_kv, D-k]`` (int16).

    ``kernel``: ``"sdpa"`` runs ``scaled_dot_product_attention`` with the recent tokens' other channels as an
    additive mask; ``"matmul"`` (the default) computes the same logits with two matmuls, adds the recent part in
    place and applies softmax. On a CPU, for one decoding query over 4k tokens, the matmul form takes 0.45 ms per
    layer and SDPA 0.64 ms without a mask, 0.86 ms with one (SmolLM2 shapes, one thread): PyTorch's CPU SDPA kernel
    is built for many queries, not one.
    """

    kernel = "matmul"

    def __init__(self, length: int, store, kernel: str = "matmul"):
        super().__init__(length, store)
        self.kernel = kernel

    def _append(self, key: torch.Tensor, value: torch.Tensor) -> None:
        s = self.store
        s["k_kept"].append(gather_channels(key, s["k_idx"].long()))
        s["k_rest"].append(gather_channels(key, s["r_idx"].long()))
        s["v"].append(value)
        self.length += key.shape[2]

    def attend(self, call: AttentionCall) -> torch.Tensor:
        self._append(call.key, call.value)
        s = self.store
        bsz, heads, q_len, dim = call.query.shape
        kv_heads, groups = call.num_kv_heads, call.groups
        length, m = self.length, s["k_rest"].length
        rows = call.query.reshape(bsz, kv_heads, groups * q_len, dim)
        q_kept = gather_channels(rows, s["k_idx"].long())
        rest = None
        if m:
            q_rest = gather_channels(rows, s["r_idx"].long())
            rest = q_rest @ s["k_rest"].view().transpose(2, 3)  # [B, H_kv, G*q, m]
        allowed = None
        if not call.attends_everything():
            allowed = call.allowed(length)  # [B|1, 1, q, L]
            allowed = allowed[:, :, None].expand(allowed.shape[0], 1, groups, q_len, length)
            allowed = allowed.reshape(allowed.shape[0], 1, groups * q_len, length)
        if self.kernel == "sdpa":
            mask = None
            if rest is not None or allowed is not None:
                mask = rows.new_zeros(bsz, kv_heads, groups * q_len, length)
            if rest is not None:
                mask[..., length - m:] = rest * call.scaling
            if allowed is not None:
                mask = mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)
            out = F.scaled_dot_product_attention(q_kept, s["k_kept"].view(), s["v"].view(), attn_mask=mask,
                                                 scale=call.scaling)
        else:
            logits = q_kept @ s["k_kept"].view().transpose(2, 3)  # [B, H_kv, G*q, L]
            if rest is not None:
                logits[..., length - m:] += rest
            logits = logits * call.scaling
            if allowed is not None:
                logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
            probs = logits.softmax(-1, dtype=torch.float32).to(rows.dtype)
            out = probs @ s["v"].view()
        return out.view(bsz, heads, q_len, dim)

    def full_kv(self):
        """Keys with the pruned channels zero-filled and the values, ``[B, H_kv, L, D]`` each (temporaries)."""
        s = self.store
        dim = s["k_idx"].shape[-1] + s["r_idx"].shape[-1]
        keys = scatter_channels([(s["k_kept"].view(), s["k_idx"])], dim)
        rest = s["k_rest"].view()
        if rest.shape[2]:
            tail = keys[:, :, self.length - rest.shape[2]:]
            tail.scatter_(3, s["r_idx"].long()[:, :, None, :].expand(*rest.shape), rest)
        return keys, s["v"].view()

    def materialize(self, key: torch.Tensor, value: torch.Tensor):
        self._append(key, value)
        return self.full_kv()

    def crop_tokens(self, length: int) -> None:
        s = self.store
        drop = self._tokens_to_drop(length, s["k_rest"].length, "a ThinK cache layer", "kept at full width")
        if not drop:
            return
        for name in ("k_kept", "v", "k_rest"):
            s[name].truncate(s[name].length - drop)
        self.length -= drop
