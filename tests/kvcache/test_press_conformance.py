"""Every registered KV press meets the press contract (one row per press in `ROWS`; a new press without a row fails).

Contract: a dataclass built by name from its options (`prunekit kv` does exactly this), usable as a context manager
around plain model calls; inside, the cache a prefill leaves holds fewer bytes than the full cache and a
continuation scores finite logits over it; outside, the model is back to itself (same logits as before).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from prunekit.config import from_dict
from prunekit.kvcache import PRESSES
from prunekit.kvcache.base import cache_nbytes
from prunekit.kvcache.hf_compat import new_cache

from .test_think import tiny_model

# name -> options giving a small, file-free configuration (``init: svd`` needs no calibration data)
ROWS = {
    "think": {"key_ratio": 0.5, "window_size": 8},
    "cskv": {"k_density": 0.25, "v_density": 0.25, "window": 8, "sink": 0, "init": "svd"},
}


def test_every_registered_press_has_a_row():
    assert sorted(ROWS) == PRESSES.names()


@pytest.mark.parametrize("name", PRESSES.names())
def test_press_conforms(name):
    cls = PRESSES.get(name)
    assert dataclasses.is_dataclass(cls) and (cls.__doc__ or "").strip()
    press = from_dict(cls, dict(ROWS[name]))
    model = tiny_model()
    ids = torch.randint(1, 256, (2, 108), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        full = new_cache(model)
        model(ids[:, :100], past_key_values=full)
        cache = new_cache(model)
        with press(model):
            model(ids[:, :100], past_key_values=cache)
            compressed = cache_nbytes(cache)  # after the prefill, where compression happens
            rest = model(ids[:, 100:], past_key_values=cache).logits
        after = model(ids).logits
    assert compressed < cache_nbytes(full)
    assert rest.shape == (2, 8, model.config.vocab_size) and torch.isfinite(rest).all()
    assert torch.equal(before, after)  # nothing left patched or hooked


def test_presses_are_listed_under_the_name_users_type(capsys):
    from prunekit.cli.main import main

    assert main(["ls", "presses"]) == 0
    out = capsys.readouterr().out
    assert "presses" in out and all(name in out for name in PRESSES.names())
    assert main(["ls", "presss"]) == 1
