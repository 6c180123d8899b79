"""Every coupling of `prunekit.kvcache` to Hugging Face ``transformers`` internals lives here, behind a version check.

What this module knows about transformers (tested against 5.2; accepted range in `SUPPORTED_TRANSFORMERS`):

* where the attention blocks of a Llama-family causal LM live (``model.model.layers[i].self_attn``) and which
  attention classes have the Llama layout (``q_proj``/``k_proj``/``v_proj``/``o_proj``, rotary embeddings applied to
  queries and keys, grouped-query attention through ``num_key_value_groups``);
* the attention forward signature (``hidden_states, position_embeddings, attention_mask, past_key_values,
  cache_position, **kwargs``), which `patched_attention` replaces, per module instance, for the duration of a
  ``with`` block;
* the ``Cache`` / ``CacheLayerMixin`` API: a cache is a list ``cache.layers`` of per-layer objects that answer
  ``get_seq_length`` and ``get_mask_sizes``; `CacheLayerBase` is such a layer for compressed storage;
* the mask formats the model hands to attention (``None`` for plain causal attention under SDPA, a boolean
  ``[B, 1, q, kv]`` mask for SDPA, an additive float mask for eager), which `AttentionCall.allowed` normalises;
* the configured attention function (``ALL_ATTENTION_FUNCTIONS``), used unchanged for prefill so that prefill numerics
  are exactly those of the uncompressed model.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..errors import UnsupportedOperationError

SUPPORTED_TRANSFORMERS = ("5.0", "5.3")  # [min, max) of the versions whose internals this module mirrors
SUPPORTED_ATTENTION = ("LlamaAttention", "Qwen2Attention", "MistralAttention")


class UnsupportedModelError(UnsupportedOperationError):
    """The model's architecture or the installed transformers version is not one prunekit.kvcache supports."""


def check_transformers_version() -> str:
    """Check that the installed transformers lies in `SUPPORTED_TRANSFORMERS`.

    Returns:
        The installed version string.

    Raises:
        UnsupportedModelError: transformers is missing or outside the supported range.
    """
    from packaging.version import Version

    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is a hard dependency of this subpackage
        raise UnsupportedModelError(f"prunekit.kvcache needs transformers: {exc}") from exc
    low, high = SUPPORTED_TRANSFORMERS
    version = Version(transformers.__version__)
    if not (Version(low) <= version < Version(high)):
        raise UnsupportedModelError(
            f"prunekit.kvcache.hf_compat mirrors transformers >={low},<{high} internals (cache layers, attention "
            f"forward); found {transformers.__version__}. Install a supported version: pip install "
            f"'transformers>={low},<{high}'")
    return transformers.__version__


def attention_modules(model: nn.Module) -> List[nn.Module]:
    """The self-attention module of every decoder layer, after checking that the architecture is supported.

    Args:
        model: a Hugging Face causal LM (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``MistralForCausalLM``...).

    Raises:
        UnsupportedModelError: when the model has no ``model.layers[i].self_attn`` of a Llama-layout class.
    """
    check_transformers_version()
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UnsupportedModelError(
            f"prunekit.kvcache: {type(model).__name__} has no model.layers; supported are Llama-family causal LMs "
            f"whose attention is one of {', '.join(SUPPORTED_ATTENTION)}")
    modules = []
    for index, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        name = type(attn).__name__
        if name not in SUPPORTED_ATTENTION:
            raise UnsupportedModelError(
                f"prunekit.kvcache: layer {index} of {type(model).__name__} uses attention {name}, which has no "
                f"compressed-cache path; supported attention classes: {', '.join(SUPPORTED_ATTENTION)}")
        modules.append(attn)
    return modules


def rotary_module(model: nn.Module) -> nn.Module:
    """The model's shared rotary-embedding module (maps ``position_ids [B, T]`` to ``(cos, sin)``)."""
    return model.model.rotary_emb


def projections(module: nn.Module) -> Tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """``(q_proj, k_proj, v_proj, o_proj)`` of a supported attention module."""
    return module.q_proj, module.k_proj, module.v_proj, module.o_proj


def head_layout(module: nn.Module) -> Tuple[int, int, int]:
    """``(num_heads, num_kv_heads, head_dim)`` of a supported attention module."""
    config = module.config
    return config.num_attention_heads, config.num_key_value_heads, module.head_dim


def _apply_rope_fn(module: nn.Module) -> Callable:
    """The ``apply_rotary_pos_emb`` of the module's own modeling file (so numerics match the model exactly)."""
    fn = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
    if fn is None:  # pragma: no cover - every supported modeling file defines it
        raise UnsupportedModelError(f"prunekit.kvcache: {type(module).__module__} has no apply_rotary_pos_emb")
    return fn


def apply_rope(module: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, D]`` by ``cos, sin [B, T, D]`` with the model's own rotary function."""
    rotated, _ = _apply_rope_fn(module)(x, x[:, :1], cos, sin)
    return rotated


def _sliding_window(module: nn.Module) -> Optional[int]:
    if hasattr(module, "sliding_window"):
        return module.sliding_window
    return getattr(module.config, "sliding_window", None) if type(module).__name__ == "MistralAttention" else None


@dataclass
class AttentionCall:
    """Everything one attention forward provides, with queries and keys already rotated.

    Attributes:
        module: the attention module. layer_idx: its layer index.
        hidden: ``[B, T, hidden]`` attention input (after the input norm).
        query: ``[B, H, T, D]`` post-RoPE queries. key: ``[B, H_kv, T, D]`` post-RoPE keys. value: ``[B, H_kv, T, D]``.
        mask: the model's mask as given (None, bool ``[B, 1, T, kv]`` or additive float ``[B, 1, T, kv]``).
        cache: the ``Cache`` object (None when ``use_cache=False``). cache_position: ``[T]`` slot of each query.
        position_ids: ``[B|1, T]`` rotary positions of the queries. rotary: the model's rotary module.
        kwargs: remaining keyword arguments, passed on to the configured attention function.
    """

    module: nn.Module
    layer_idx: int
    hidden: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: Optional[torch.Tensor]
    cache: object
    cache_position: torch.Tensor
    position_ids: torch.Tensor
    rotary: nn.Module
    kwargs: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.query.shape[0]

    @property
    def q_len(self) -> int:
        return self.query.shape[2]

    @property
    def num_kv_heads(self) -> int:
        return self.key.shape[1]

    @property
    def groups(self) -> int:
        return self.query.shape[1] // self.key.shape[1]

    @property
    def scaling(self) -> float:
        return self.module.scaling

    def hf_attention(self, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The model's configured attention (sdpa, eager...) over full ``key, value [B, H_kv, kv, D]``.

        Returns:
            ``[B, H, T, D]`` attention output (before ``o_proj``).
        """
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        module_file = sys.modules[type(self.module).__module__]
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.module.config._attn_implementation, module_file.eager_attention_forward)
        extra = dict(self.kwargs)
        window = _sliding_window(self.module)
        if window is not None:
            extra["sliding_window"] = window
        out, _ = interface(self.module, self.query, key, value, self.mask, dropout=0.0,
                           scaling=self.scaling, **extra)
        return out.transpose(1, 2)

    def attends_everything(self) -> bool:
        """True when every cached slot is visible to every query (one query token and no mask: plain decoding)."""
        return self.mask is None and self.q_len == 1

    def allowed(self, kv_len: int) -> torch.Tensor:
        """Which cache slots each query may attend, as a boolean ``[B|1, 1, T, kv_len]`` (True = attend).

        ``None`` masks (plain causal attention) are expanded from ``cache_position``; float masks are read as
        additive masks (a slot is allowed where the mask is above half the dtype's minimum).
        """
        mask = self.mask
        if mask is None:
            slots = torch.arange(kv_len, device=self.query.device)
            return (slots[None, :] <= self.cache_position[:, None])[None, None]
        if mask.dtype != torch.bool:
            mask = mask > torch.finfo(mask.dtype).min / 2
        if mask.shape[-1] != kv_len:
            raise UnsupportedOperationError(
                f"prunekit.kvcache: layer {self.layer_idx} got an attention mask over {mask.shape[-1]} slots, expected "
                f"{kv_len}; was the cache built outside the press context?")
        return mask

    def rope_at(self, like: torch.Tensor, position_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin) [B, T, D]`` for arbitrary ``position_ids [B, T]`` (dtype of `like`)."""
        return self.rotary(like, position_ids=position_ids)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Apply the model's rotary embedding to ``x [B, H, T, D]``."""
        return apply_rope(self.module, x, cos, sin)


def _make_forward(module: nn.Module, layer_idx: int, rotary: nn.Module, handler: Callable) -> Callable:
    rope = _apply_rope_fn(module)

    def forward(hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                cache_position=None, **kwargs):
        bsz, q_len, _ = hidden_states.shape
        head_dim = module.head_dim
        query = module.q_proj(hidden_states).view(bsz, q_len, -1, head_dim).transpose(1, 2)
        key = module.k_proj(hidden_states).view(bsz, q_len, -1, head_dim).transpose(1, 2)
        value = module.v_proj(hidden_states).view(bsz, q_len, -1, head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = rope(query, key, cos, sin)
        position_ids = kwargs.pop("position_ids", None)
        if cache_position is None:
            past = past_key_values.get_seq_length(layer_idx) if past_key_values is not None else 0
            cache_position = torch.arange(past, past + q_len, device=hidden_states.device)
        if position_ids is None:
            position_ids = cache_position[None]
        for unused in ("use_cache", "output_attentions"):
            kwargs.pop(unused, None)
        call = AttentionCall(module, layer_idx, hidden_states, query, key, value, attention_mask, past_key_values,
                             cache_position, position_ids, rotary, kwargs)
        out = handler(call)  # [B, H, T, D]
        out = out.transpose(1, 2).reshape(bsz, q_len, -1).contiguous()
        return module.o_proj(out), None

    return forward


@contextlib.contextmanager
def patched_attention(model: nn.Module, handler: Callable[[AttentionCall], torch.Tensor]) -> Iterator[None]:
    """Route every attention forward of `model` through ``handler(call) -> [B, H, T, D]`` inside the block.

    The patch sets an instance-level ``forward`` on each attention module and always removes it on exit, so the
    model is untouched afterwards (hooks registered by others keep working).

    Raises:
        UnsupportedModelError: unsupported architecture or transformers version; a module already patched.
    """
    modules = attention_modules(model)
    rotary = rotary_module(model)
    for index, module in enumerate(modules):
        if "forward" in vars(module):
            raise UnsupportedModelError(
                f"prunekit.kvcache: layer {index}'s attention already has a patched forward (nested press contexts "
                f"on one model are not supported)")
    try:
        for index, module in enumerate(modules):
            module.forward = _make_forward(module, getattr(module, "layer_idx", index), rotary, handler)
        yield
    finally:
        for module in modules:
            vars(module).pop("forward", None)


# ------------------------------------------------------------------------------------------------- cache plumbing

def _cache_layer_base():
    from transformers.cache_utils import CacheLayerMixin

    return CacheLayerMixin


class CacheLayerBase(_cache_layer_base()):
    """A ``transformers`` cache layer whose storage is defined by a press (see `prunekit.kvcache.base`).

    It counts *logical* tokens (``length``: every token the model has seen, evicted ones included), so that the
    model's cache positions, rotary positions and mask sizes stay those of the uncompressed model. Subclasses hold
    their tensors and implement ``index_batch`` (beam search / batch selection) and attention.
    """

    is_compileable = False
    is_sliding = False

    def __init__(self, length: int, is_sliding: bool = False):
        super().__init__()
        self.length = int(length)
        self.is_sliding = is_sliding
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(self, key_states, value_states, cache_kwargs=None):
        raise UnsupportedOperationError(
            f"prunekit.kvcache: this cache layer ({type(self).__name__}) holds compressed keys and values; run the "
            f"model inside the press context that filled it (with press(model): ...)")

    def get_mask_sizes(self, cache_position: torch.Tensor) -> Tuple[int, int]:
        return self.length + cache_position.shape[0], 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_cache_shape(self) -> int:
        return -1

    def offload(self):
        return None

    def prefetch(self):
        return None

    def reset(self) -> None:
        raise UnsupportedOperationError("prunekit.kvcache: a compressed cache cannot be reset in place; make a new one")

    def crop(self, max_length: int) -> None:
        raise UnsupportedOperationError("prunekit.kvcache: a compressed cache cannot be cropped (assisted decoding)")

    def index_batch(self, indices: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.index_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.index_batch(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        batch = self.batch_size()
        self.index_batch(torch.arange(batch).repeat_interleave(repeats))

    def batch_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


def cache_layer(cache, layer_idx: int):
    """The cache's layer object for `layer_idx`, creating empty ones for lazily built ``DynamicCache`` objects."""
    layers = cache.layers
    while len(layers) <= layer_idx:
        factory = getattr(cache, "layer_class_to_replicate", None)
        if factory is None:
            raise UnsupportedOperationError(
                f"prunekit.kvcache: {type(cache).__name__} has no layer {layer_idx} and cannot create one")
        layers.append(factory())
    return layers[layer_idx]


def is_empty_layer(layer) -> bool:
    """True when a plain transformers cache layer holds no tokens yet."""
    return layer.get_seq_length() == 0


def set_cache_layer(cache, layer_idx: int, layer) -> None:
    cache.layers[layer_idx] = layer


def layer_tensors(layer) -> List[torch.Tensor]:
    """The tensors a cache layer holds: ``tensors()`` for compressed layers, ``keys``/``values`` otherwise."""
    if hasattr(layer, "tensors"):
        return list(layer.tensors())
    out = []
    for name in ("keys", "values", "_quantized_keys", "_quantized_values"):
        value = getattr(layer, name, None)
        if isinstance(value, torch.Tensor):
            out.append(value)
    return out


def new_cache(model: nn.Module):
    """An empty ``DynamicCache`` for `model` (the object presses fill with compressed layers)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)
