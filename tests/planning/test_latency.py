"""The measured-latency cost model: grids, interpolation, the on-disk cache, the one-node ONNX layers, and a latency
budget end to end. Timings are measured but never asserted against a number (the machine is shared)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import prunekit
from prunekit.planning import PlanConfig, analyse, eligibility
from prunekit.planning.latency import (LatencyTable, Timer, fit_latency_model, interpolate, latency_cost,
                                       onnx_layer, record_layers)

from .test_plan_config import small_cnn


def test_interpolation_is_exact_on_the_grid_and_bilinear_between():
    grid = {"out": [4, 8], "in": [2, 6], "ms": [[1.0, 3.0], [5.0, 7.0]]}
    assert interpolate(grid, 4, 2) == 1.0 and interpolate(grid, 8, 6) == 7.0
    assert interpolate(grid, 6, 4) == pytest.approx(4.0)  # centre: mean of the corners
    assert interpolate(grid, 6, 2) == pytest.approx(3.0)
    assert interpolate(grid, 100, 100) == 7.0 and interpolate(grid, 1, 1) == 1.0  # clamped


def test_layers_are_recorded_as_called_and_onnx_layers_compute_the_same():
    import onnxruntime as ort

    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    layers = record_layers(model, x)
    assert list(layers) == ["0", "3", "6", "11"]
    assert layers["3"].input_shape == (2, 16, 8, 8) and layers["3"].kind == "conv"
    assert layers["11"].kind == "linear" and layers["11"].input_shape == (2, 32)
    for name in ("3", "11"):
        module = model.get_submodule(name)
        inp = torch.randn(layers[name].input_shape)
        session = ort.InferenceSession(onnx_layer(module, layers[name], inp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": inp.numpy()})[0]
        np.testing.assert_allclose(got, module(inp).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_latency_table_is_cached_and_monotone(tmp_path):
    model, x = small_cnn(), torch.randn(1, 3, 8, 8)
    fitted = fit_latency_model(model, x, "eager", repeats=3, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("eager-*.json"))
    assert len(files) == 1
    table = json.loads(files[0].read_text())
    assert table["runtime"] == "eager" and table["dtype"] == "torch.float32" and table["entries"]
    for grid in table["entries"].values():
        ms = np.array(grid["ms"])
        assert (np.diff(ms, axis=0) >= 0).all() and (np.diff(ms, axis=1) >= 0).all()
    assert fitted.model_ms > 0 and fitted.rest_ms >= 0
    again = LatencyTable(Timer("eager", repeats=3), tmp_path)
    for layer in record_layers(model, x).values():
        again.grid(layer)
    assert again.measured == 0  # everything came from the cache
    other = LatencyTable(Timer("eager", repeats=3, threads=2), tmp_path)
    assert other.path != again.path  # another thread count is another table


def test_latency_cost_falls_with_removed_channels(tmp_path):
    model, x = small_cnn(), torch.randn(1, 3, 8, 8)
    groups = eligibility(analyse(model, x), PlanConfig())
    cost = latency_cost(model, groups, x, "eager", repeats=3, cache_dir=tmp_path, progress=False)
    prunable = [g for g in groups if g.prunable]
    full = cost({})
    assert full == pytest.approx(cost.model.model_ms, rel=1e-6)
    half = cost({g.id: g.size // 2 for g in prunable})
    most = cost({g.id: g.size - 1 for g in prunable})
    assert most <= half <= full


def test_latency_budget_plans_to_its_predicted_fraction(tmp_path, monkeypatch, synthetic_timings):
    from prunekit import paths

    monkeypatch.setenv(paths.CACHE_ENV_VAR, str(tmp_path))  # the default latency cache goes under tmp_path
    model, x = small_cnn(width=32).train(), torch.randn(1, 3, 16, 16)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    config = PlanConfig.from_dict({"allocator": "global", "budget": {"target": "latency", "keep_fraction": 0.6,
                                                                    "runtime": "eager"}, "tolerance": 0.05})
    plan = prunekit.plan(model, x, config)
    assert model.training and all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())  # left as found
    model.eval()
    prov = plan.provenance
    assert prov["budget"] == "latency" and prov["plan_config"]["budget"]["runtime"] == "eager"
    assert prov["cost"] / prov["base_cost"] == pytest.approx(0.6, rel=0.05)
    assert sum(len(v) for v in plan.removed.values()) > 0
    assert list((tmp_path / "latency").glob("eager-*.json"))
    pruned = prunekit.apply(model, plan, x)
    assert pruned.prunekit_verification.passed


def test_cuda_runtime_without_a_gpu_is_refused_by_name():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(Exception, match="cuda"):
        Timer("cuda")
    with pytest.raises(Exception, match="runtime"):
        Timer("tensorrt")


def test_calibration_fits_the_line_through_both_measured_models():
    """Layers timed alone say 8 ms at full width and 4 ms at the kept widths; the whole model measured 10 ms and the
    pruned copy 7 ms: 0.75 ms per layer-ms and 4 ms that no pruning removes, so both measurements are reproduced."""
    from prunekit.planning.latency import LatencyModel, LayerCall

    layer = LayerCall("fc", "linear", 8, 8, (1, 8), 8)
    grid = {"out": [4, 8], "in": [8], "ms": [[4.0], [8.0]]}
    fitted = LatencyModel({"fc": layer}, {"fc": grid}, {"fc": 8.0}, model_ms=10.0, rest_ms=2.0, runtime="eager")
    kept = {"fc": (0.5, 1.0)}
    fitted.calibrate(kept, full_ms=10.0, pruned_ms=7.0)
    assert fitted.calibrated
    assert abs(fitted.predict({}) - 10.0) < 1e-9 and abs(fitted.predict(kept) - 7.0) < 1e-9
    assert abs(fitted.rest_fixed_ms - 4.0) < 1e-9 and abs(fitted.layer_scale - 0.75) < 1e-9
    noisy = LatencyModel({"fc": layer}, {"fc": grid}, {"fc": 8.0}, model_ms=10.0, rest_ms=2.0, runtime="eager")
    noisy.calibrate(kept, full_ms=10.0, pruned_ms=10.5)  # a pruned copy measured slower is no evidence
    assert not noisy.calibrated and abs(noisy.predict({}) - 10.0) < 1e-9
