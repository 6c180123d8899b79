"""Calibration batches and the loss for a registered model, from `CalibrationConfig` (what `prunekit prune --data`
uses). The loss follows the model's task: cross-entropy for classifiers, the model's own next-token loss for causal
language models.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .config import CalibrationConfig

Loss = Callable[[Any, Any], torch.Tensor]


def _call_supported(factory: Callable, **kwargs: Any) -> Any:
    """Call a dataset factory with the keyword arguments its signature accepts (None values dropped)."""
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return factory(**{k: v for k, v in kwargs.items() if v is not None and (takes_any or k in params)})


def classification_loss(output: Any, batch: Any) -> torch.Tensor:
    """Cross-entropy of logits ``[B, classes]`` against the batch's labels ``batch[1]`` ``[B]``."""
    logits = output.logits if hasattr(output, "logits") else output
    return F.cross_entropy(logits, batch[1].to(logits.device))


def calibration_data(model_name: str, cfg: CalibrationConfig) -> Tuple[List[Any], Optional[Loss]]:
    """`cfg.batches` batches of `cfg.batch_size` items from the dataset `cfg.data`, and the task's loss.

    Args:
        model_name: a registered model name (its task and input normalisation pick the loss and transform).
        cfg: dataset, split, amount and seed.

    Returns:
        (batches, loss_fn): image classifiers get ``(images [B, C, H, W], labels [B])`` batches and cross-entropy;
        causal LMs get ``{"input_ids": [B, T], "labels": [B, T]}`` batches and loss None (the model's own loss).

    Raises:
        ConfigError: no dataset named, a model that is not registered, or a task without a calibration loss.
    """
    from ..data import DATASETS
    from ..models import MODELS, info

    if cfg.data is None:
        raise ConfigError("calibration.data: no dataset named (CLI: --data NAME)")
    factory = DATASETS.get(cfg.data)
    if model_name not in MODELS:
        raise ConfigError(f"calibration.data: calibration data is read for registered models (prunekit ls models); "
                          f"'{model_name}' is not one: use a data-free criterion (l1, l2, bn_scale, fpgm)")
    meta = info(model_name)
    n = cfg.batches * cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    if meta.task == "classification":
        normalize = (meta.mean, meta.std) if meta.mean is not None else None
        dataset = _call_supported(factory, split=cfg.split, normalize=normalize)
        if len(dataset) == 0:
            raise ConfigError(f"calibration.data: dataset '{cfg.data}' split '{cfg.split}' is empty")
        order = torch.randperm(len(dataset), generator=gen)[:n].tolist()
        batches = []
        for start in range(0, len(order), cfg.batch_size):
            items = [dataset[i] for i in order[start:start + cfg.batch_size]]
            batches.append((torch.stack([torch.as_tensor(x) for x, _ in items]),
                            torch.as_tensor([int(y) for _, y in items])))
        return batches, classification_loss
    if meta.task == "causal-lm":
        from ..data.text import tokenize_for_perplexity
        from ..models.hf import load_tokenizer

        text = _call_supported(factory, split=cfg.split)
        if not isinstance(text, str):
            raise ConfigError(f"calibration.data: a causal LM needs a text corpus; '{cfg.data}' is not one")
        window = 128
        ids = tokenize_for_perplexity(text, load_tokenizer(model_name), max_tokens=n * window)
        if ids.numel() < window:
            raise ConfigError(f"calibration.data: '{cfg.data}' holds fewer than {window} tokens")
        rows = ids[: (ids.numel() // window) * window].reshape(-1, window)
        rows = rows[torch.randperm(rows.shape[0], generator=gen)[:n]]
        return [{"input_ids": b, "labels": b} for b in rows.split(cfg.batch_size)], None
    raise ConfigError(f"calibration.data: no calibration loss for {meta.task} models yet; use a data-free "
                      f"criterion (l1, l2, bn_scale, fpgm) for '{model_name}'")
