"""The PDP benchmark's summary and targets: PDP - GMP on ResNet-56, mask checks, unmeasured targets left open."""
from __future__ import annotations

import pytest

from ._bench_module import bench_module


@pytest.fixture(scope="module")
def bench():
    with bench_module("pdp.py", "pdp_bench_under_test") as module:
        yield module


def row(model, pattern, method, score, seed=0, **extra):
    base = {"model": model, "pattern": pattern, "method": method, "score": score, "seed": seed, "seconds": 1.0}
    if pattern != "channel":
        base.update(layer_target_error=0, nm_violations=0, masks_verified=True, dense_macs=100, sparse_macs=50)
    return {**base, **extra}


def test_targets_compare_pdp_with_gmp_on_resnet56_over_seeds(bench):
    rows = [row("cifar_resnet56", "unstructured", "pdp", 0.80), row("cifar_resnet56", "unstructured", "pdp", 0.70, 1),
            row("cifar_resnet56", "unstructured", "gmp", 0.74), row("cifar_resnet56", "unstructured", "gmp", 0.74, 1),
            row("cifar_resnet56", "2:4", "pdp", 0.60, final_undecided=0.5),
            row("cifar_resnet56", "2:4", "gmp", 0.61, nm_violations=3)]
    summary = bench.summarise(rows)
    assert summary[0]["score"] == pytest.approx(0.75) and summary[0]["seeds"] == 2
    assert summary[3]["final_undecided"] is None  # mask dynamics are reported for PDP only
    targets = {t["name"]: t for t in bench.make_targets(rows, summary)}
    unstructured = targets["ResNet-56 90% unstructured: PDP - GMP top-1 (points)"]
    assert unstructured["value"] == pytest.approx(1.0) and unstructured["passed"]
    assert not targets["ResNet-56 2:4: PDP - GMP top-1 (points)"]["passed"]
    assert targets["stored N:M masks violating their pattern (groups)"]["value"] == 3
    channel = targets["channel arms physically pruned and verified (share)"]
    assert channel["value"] is None and not channel["passed"]  # not measured: never reported as met


def test_channel_rows_must_be_smaller_verified_and_reloadable(bench):
    ok = row("cifar_resnet20", "channel", "pdp", 0.5, physical_verified=True, reload_equal=True, params_before=10,
             params_after=5)
    bad = dict(ok, method="gmp", reload_equal=False)
    targets = {t["name"]: t for t in bench.make_targets([ok, bad], bench.summarise([ok, bad]))}
    assert targets["channel arms physically pruned and verified (share)"]["value"] == pytest.approx(0.5)
