"""The leakage simulator and the correlation power analysis: exact traces, weight recovery, the defence's effect."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.dynamic.pixel_mask import PixelActivationMap, PixelMaskConfig
from prunekit.security.cpa import correlation_scores, hypotheses, log_checkpoints, traces_needed, true_rank
from prunekit.security.leakage import LayerGeometry, hamming_weight8, mac_schedule, quantize_int8, simulate_traces
from prunekit.security.simulate import SimulationConfig, simulate_defence


def test_hamming_weight_of_the_low_byte_and_int8_quantisation():
    assert hamming_weight8(np.array([0, 3, -1, 255, 256, -128])).tolist() == [0, 2, 8, 8, 0, 1]
    q, scale = quantize_int8(torch.tensor([-1.0, 0.5, 0.25]))
    assert q.tolist() == [-127, 64, 32] and scale == pytest.approx(1 / 127)


def test_schedule_lists_every_non_padding_mac_in_order():
    geom = LayerGeometry(1, 8, 8)
    schedule = mac_schedule(geom)
    assert len(schedule) == 22 * 22  # per axis: 2 edge outputs read 2 taps, 6 inner ones 3
    assert schedule.position[0] == 0 and schedule.tap[:4].tolist() == [4, 5, 7, 8]  # output (0, 0): no top/left row
    idx = schedule.index_of(4 * 8 + 4, 4)
    assert schedule.pixel[idx] == 36
    with pytest.raises(Exception, match="does not use weight tap"):
        schedule.index_of(0, 0)  # the top-left tap of output (0, 0) reads padding


def test_traces_leak_each_executed_product_and_skipped_macs_take_no_time():
    rng = np.random.default_rng(0)
    geom = LayerGeometry(1, 4, 4)
    schedule = mac_schedule(geom)
    weights = rng.integers(-127, 128, 9)
    inputs = rng.integers(-128, 128, (5, 16))
    leak = hamming_weight8(weights[schedule.tap] * inputs[:, schedule.element])
    traces, executed = simulate_traces(weights, inputs, schedule, None, 0.0, rng)
    assert np.array_equal(traces, leak) and executed.all()
    active = rng.random((5, 16)) < 0.5
    traces, executed = simulate_traces(weights, inputs, schedule, active, 0.0, rng)
    for n in range(5):
        ran = leak[n][executed[n]]
        assert np.array_equal(traces[n, :len(ran)], ran) and not traces[n, len(ran):].any()
    realigned, _ = simulate_traces(weights, inputs, schedule, active, 0.0, rng, realign=True)
    assert np.array_equal(realigned, np.where(executed, leak, 0))


def test_cpa_recovers_the_weight_and_traces_needed_reads_the_success_curve():
    rng = np.random.default_rng(1)
    known = rng.integers(-128, 128, 400)
    weight = 77
    traces = (hamming_weight8(weight * known) + rng.normal(0, 0.5, 400))[:, None]
    checkpoints = [20, 100, 400]
    scores = correlation_scores(hypotheses(known), traces, checkpoints)
    ranks = true_rank(scores, weight + 128)
    assert ranks[-1] == 1
    assert traces_needed(np.array([[5, 1, 1], [1, 2, 1]]), checkpoints, 1.0) == 400
    assert traces_needed(np.array([[5, 1, 1], [1, 1, 1]]), checkpoints, 1.0) == 100
    assert traces_needed(np.array([[5, 1, 2], [1, 1, 1]]), checkpoints, 1.0) is None
    assert log_checkpoints(10, 1000, 3).tolist() == [10, 100, 1000]


def test_defence_raises_traces_needed_and_realignment_undoes_it():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    importance = torch.rand(8, 8)
    pam = PixelActivationMap(PixelMaskConfig(keep_prob=0.5, top_q=0.25), (8, 8), importance)
    cfg = SimulationConfig(sigma=1.0, max_traces=600, checkpoints=12, attacks=3, success_rate=0.66, seeds=(0,))
    result = simulate_defence(conv, (8, 8), pam, cfg)
    summary = result["summary"]
    assert summary["undefended"]["median"] <= 300
    assert summary["defended"]["median"] > 2 * summary["undefended"]["median"]  # inf when never recovered
    assert summary["realigned"]["median"] <= 600
    assert result["theoretical_ratio"] > 10 and result["ratio"] >= 2
