"""CSKV calibration statistics: attention-received token weights against a brute-force computation, and the
weighted second moments they produce."""
import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.kvcache import cskv_train, hf_compat
from prunekit.kvcache.calibration import collect_attention_inputs, received_attention

from .test_think import tiny_model


def _first_call(model, ids):
    calls = []

    def handler(call):
        calls.append(call)
        return call.hf_attention(call.key, call.value)

    with torch.no_grad(), hf_compat.patched_attention(model, handler):
        model(ids, use_cache=False)
    return calls[0]


def _brute_force_weights(call, sink, window):
    query, key = call.query[0].double(), call.key[0].double()
    heads, length, _ = query.shape
    groups = heads // key.shape[0]
    weight = torch.zeros(length, dtype=torch.float64)
    for j in range(sink, length):
        far = list(range(j + window, length))
        if not far:
            continue
        total = 0.0
        for h in range(heads):
            for i in far:
                logits = torch.stack([query[h, i] @ key[h // groups, m] for m in range(i + 1)]) * call.scaling
                total += float(logits.softmax(0)[j])
        weight[j] = total / (heads * len(far))
    used = weight > 0
    return weight * used.sum() / weight.sum()


@pytest.mark.parametrize("sink,window", [(0, 0), (2, 5)])
def test_received_attention_matches_brute_force(sink, window):
    model = tiny_model("llama")
    call = _first_call(model, torch.randint(1, 256, (1, 14), generator=torch.Generator().manual_seed(3)))
    got = received_attention(call, sink, window)[0].double()
    expected = _brute_force_weights(call, sink, window)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got[:sink] == 0).all()
    if window:  # the last `window` tokens are never seen as latents
        assert (got[-window:] == 0).all()


def test_weighted_statistics_are_the_weighted_moments():
    model = tiny_model("llama")
    calib = torch.randint(1, 256, (3, 40), generator=torch.Generator().manual_seed(4))
    plain = collect_attention_inputs(model, calib, keep_inputs=True)
    weighted = collect_attention_inputs(model, calib, keep_inputs=True, weighting="attention", sink=2, window=6)
    for layer_plain, layer in zip(plain, weighted):
        x = layer["inputs"].reshape(-1, layer["inputs"].shape[-1]).double()
        torch.testing.assert_close(layer_plain["second"], x.T @ x / x.shape[0])
        w = layer["weights"].reshape(-1, 1).double()
        torch.testing.assert_close(layer["second"], (x * w).T @ x / w.sum())
        assert (layer["weights"][:, :2] == 0).all() and (layer["weights"][:, -6:] == 0).all()
        torch.testing.assert_close(layer["weights"].sum(1) / (layer["weights"] > 0).sum(1), torch.ones(3))
        assert layer["weighting"] == "attention" and layer_plain["weighting"] == "uniform"
    # the statistics differ, so the fitted factors do too; a config that contradicts the statistics is refused
    with pytest.raises(ConfigError, match="weighting"):
        cskv_train.fit(model, weighted, 0.5, 0.5, cskv_train.TrainConfig(steps=0), progress=False)
    factors = cskv_train.fit(model, weighted, 0.5, 0.5, cskv_train.TrainConfig(weighting="attention"), progress=False)
    assert factors.metadata["train"]["weighting"] == "attention"
    with pytest.raises(ConfigError, match="weighting"):
        collect_attention_inputs(model, calib, weighting="loss")


def test_quantisation_aware_training_with_attention_weights():
    model = tiny_model("llama")
    calib = torch.randint(1, 256, (2, 64), generator=torch.Generator().manual_seed(6))
    cfg = cskv_train.TrainConfig(optimizer="adam", steps=5, bits=4, window=8, batch_tokens=64, weighting="attention")
    factors = cskv_train.train(model, calib, 0.5, 0.5, cfg, progress=False)
    assert all(torch.isfinite(t).all() for layer in factors.layers for t in layer.values())
