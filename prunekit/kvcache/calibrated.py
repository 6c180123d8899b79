"""One call from a model to a calibrated KV press: `calibrate` (and ``prunekit kv calibrate`` on the command line).

    press = prunekit.kvcache.calibrate(model, tokenizer)                 # CSKV, 80% smaller, WikiText-2 valid
    press = prunekit.kvcache.calibrate(model, tokenizer, data=texts, density=0.5, bits=4, save_to="cskv50_4bit")
    press = CSKVPress.from_pretrained("cskv50_4bit")                     # later: no calibration

The defaults are the settings the KV benchmark (`benchmarks/kvcache.py`) found best on SmolLM2-135M: ASVD
initialisation, layer-wise alternating least squares (20 iterations; Adam with fake-quantised latents for 4/8 bits),
ranks spread over layers and K/V by the calibration spectra (key errors weighted 3x), calibration tokens weighted by
the attention they receive while they are latents. The saved folder holds ``factors.safetensors`` plus ``cskv.json``
with the press settings, so `CSKVPress.from_pretrained` rebuilds exactly the calibrated press.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from ..errors import ConfigError

METHODS = ("cskv",)
Data = Union[None, str, Path, torch.Tensor, Iterable[str]]


@dataclass
class CalibrationConfig:
    """Recommended calibration settings (`calibrate`'s keyword arguments override them).

    Attributes:
        n_seq / seq_len: calibration windows taken from the data (``n_seq`` windows of ``seq_len`` tokens).
        steps: ALS iterations per layer (float latents) or Adam steps (quantised latents; None picks 20 / 300).
        allocation / key_weight / weighting: see `prunekit.kvcache.cskv_train.TrainConfig`.
        window / sink / group_size: the press layout the factors are calibrated for.
        seed: which windows are drawn.
    """

    n_seq: int = 32
    seq_len: int = 512
    steps: Optional[int] = None
    allocation: str = "adaptive"
    key_weight: float = 3.0
    weighting: str = "attention"
    window: int = 32
    sink: int = 4
    group_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_seq < 1 or self.seq_len < 2 * self.window + self.sink + 1:
            raise ConfigError(f"kvcache.calibrate: n_seq >= 1 and seq_len > 2 * window + sink required, got "
                              f"n_seq={self.n_seq}, seq_len={self.seq_len} (window {self.window}, sink {self.sink})")


def calibration_windows(tokenizer, data: Data, n_seq: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``[n_seq, seq_len]`` token windows from `data`.

    Args:
        tokenizer: the model's tokenizer (unused when `data` is already token ids).
        data: None (WikiText-2 *valid*, never the test text), a text file path, an iterable of strings, or token ids
            ``[N]`` / ``[N, T]``.

    Raises:
        ConfigError: the data holds fewer than `seq_len` tokens, or a file does not exist.
    """
    from .evaluate import calibration_ids

    if data is None:
        return calibration_ids(tokenizer, n_seq, seq_len, split="valid", seed=seed)
    if isinstance(data, torch.Tensor):
        ids = data.long()
        if ids.dim() == 2 and ids.shape[1] == seq_len:
            return ids[:n_seq]
        ids = ids.reshape(-1)
    else:
        if isinstance(data, (str, Path)):
            path = Path(data)
            if not path.is_file():
                raise ConfigError(f"kvcache.calibrate: data file {path} does not exist")
            text = path.read_text(encoding="utf-8")
        else:
            text = "\n\n".join(data)
        if tokenizer is None:
            raise ConfigError("kvcache.calibrate: text data needs the model's tokenizer")
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() < seq_len + 1:
        raise ConfigError(f"kvcache.calibrate: the calibration data holds {ids.numel()} tokens, fewer than one "
                          f"window of {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_seq,), generator=gen)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def calibrate(model: torch.nn.Module, tokenizer=None, data: Data = None, method: str = "cskv", density: float = 0.2,
              bits: Optional[int] = None, save_to: Optional[Union[str, Path]] = None, progress: bool = True,
              k_density: Optional[float] = None, v_density: Optional[float] = None, **settings):
    """Calibrate a KV press on `model` with the recommended settings and return it (optionally saved).

    Args:
        model: a supported Hugging Face causal LM (frozen; not modified).
        tokenizer: its tokenizer (needed unless `data` is token ids).
        data: calibration text (see `calibration_windows`); None uses WikiText-2 valid. Token ids ``[N, T]`` are
            used as N windows of T tokens unless ``n_seq`` / ``seq_len`` say otherwise.
        method: ``"cskv"`` (ThinK is training-free and needs no calibration).
        density: latent channels kept, as a fraction of the stacked ``H_kv * D`` channels, for keys and values
            alike (0.2: the cache is about 80% smaller); `k_density` / `v_density` set them apart.
        bits: None or 16 for float latents, 8 or 4 for quantised latents (calibrated quantisation-aware).
        save_to: folder to write the factors and settings into (safetensors + JSON).
        progress: show a progress bar.
        **settings: overrides of `CalibrationConfig` fields.

    Returns:
        A `prunekit.kvcache.cskv.CSKVPress` holding the calibrated factors.
    """
    from . import cskv_train
    from .cskv import CSKVPress

    if method not in METHODS:
        hint = " (ThinK is training-free: use ThinKPress directly)" if method == "think" else ""
        raise ConfigError(f"kvcache.calibrate: method must be one of {METHODS}, got {method!r}{hint}")
    if isinstance(data, torch.Tensor) and data.dim() == 2:  # ready-made windows: use them as they are
        settings.setdefault("n_seq", data.shape[0])
        settings.setdefault("seq_len", data.shape[1])
    cfg = CalibrationConfig(**settings)
    bits = 16 if bits is None else int(bits)
    kd = density if k_density is None else k_density
    vd = density if v_density is None else v_density
    press = CSKVPress(k_density=kd, v_density=vd, bits=bits, window=cfg.window, sink=cfg.sink,
                      group_size=cfg.group_size, init="svd")  # validates the settings before any work
    ids = calibration_windows(tokenizer, data, cfg.n_seq, cfg.seq_len, cfg.seed)
    quantised = bits < 16
    steps = cfg.steps if cfg.steps is not None else (300 if quantised else 20)
    train_cfg = cskv_train.TrainConfig(
        optimizer="adam" if quantised else "als", steps=steps, lr=1e-3 if quantised else 3e-3, bits=bits,
        window=cfg.window, group_size=cfg.group_size, sink=cfg.sink, allocation=cfg.allocation,
        key_weight=cfg.key_weight, weighting=cfg.weighting, seed=cfg.seed)
    factors = cskv_train.train(model, ids, kd, vd, train_cfg, progress=progress)
    factors.metadata.update(calibration=asdict(cfg), press=press.settings(), model=model_signature(model))
    press.factors, press.init = factors, "calibrated"
    if save_to is not None:
        cskv_train.save(factors, save_to)
    return press


def model_signature(model: torch.nn.Module) -> dict:
    """What a factors folder records about the model it was calibrated on (checked again when it is loaded)."""
    config = model.config
    return {"architecture": type(model).__name__, "name_or_path": str(getattr(config, "_name_or_path", "")),
            "num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "num_key_value_heads": config.num_key_value_heads}


__all__ = ["CalibrationConfig", "calibrate", "calibration_windows", "model_signature"]
