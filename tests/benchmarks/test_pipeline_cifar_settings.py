"""The CIFAR pipeline benchmark's --sparsity-scale scales every arm's sparsity strength by the same factor."""
from __future__ import annotations

import pytest

from prunekit.methods.slim_cwd import SlimSparseConfig
from prunekit.methods.stages import SparseStageConfig

from ._bench_module import bench_module


@pytest.fixture(scope="module")
def bench():
    with bench_module("pipeline_cifar.py", "pipeline_cifar_under_test") as module:
        yield module


@pytest.fixture(scope="module")
def report(bench):
    """The benchmark's reporting half (importable while `bench` holds benchmarks/ on the path)."""
    import _cifar_report

    return _cifar_report


def settings(bench, **extra):
    return {**bench.COMMON, **bench.MODES["quick"], "mode": "quick", **extra}


def test_scale_one_leaves_the_recipes_defaults(bench, tmp_path):
    s = settings(bench)
    for arm in ("c_gcp", "d_slim_cwd"):
        assert "s" not in bench.recipe_config(arm, s, tmp_path)["config"]["stage1"]


def test_scale_multiplies_each_recipes_own_default(bench, tmp_path):
    s = settings(bench, sparsity_scale=20.0)
    gcp = bench.recipe_config("c_gcp", s, tmp_path)["config"]["stage1"]["s"]
    slim = bench.recipe_config("d_slim_cwd", s, tmp_path)["config"]["stage1"]["s"]
    assert gcp == pytest.approx(20 * SparseStageConfig.s)
    assert slim == pytest.approx(20 * SlimSparseConfig.s)
    # the ablations of gcp get the same rate as gcp, so each ablation changes one thing
    assert bench.recipe_config("c_const_rate", s, tmp_path)["config"]["stage1"]["s"] == gcp


def test_scale_multiplies_torch_pruning_reg(bench):
    pytest.importorskip("torch_pruning")
    import torch

    from prunekit.models import build

    model = build("cifar_resnet56_b", pretrained=False)
    x = torch.randn(1, 3, 32, 32)
    base = bench.tp_pruner(model, x, 0.5, settings(bench)).reg
    scaled = bench.tp_pruner(model, x, 0.5, settings(bench, sparsity_scale=20.0)).reg
    assert base == pytest.approx(bench.COMMON["tp_reg"])
    assert scaled == pytest.approx(20 * base)


def test_every_override_gets_its_own_doc_section(bench):
    assert bench.section_name(settings(bench)) == ("quick", "quick")
    key, title = bench.section_name(settings(bench, train_subset=10000, stage1_epochs=2, sparsity_scale=10.0))
    assert key == "quick_2_1_train10000_sparsity_x10"
    assert title == "quick, 2+1 epochs, 10000 training images, sparsity x10"


def test_seed_spread_pairs_the_arms_of_each_seed(report):
    rows = [{"arm": arm, "accuracy": acc, "sparsity_scale": 1.0, "seed": seed}
            for seed, accs in ((0, (0.80, 0.81, 0.79)), (1, (0.82, 0.81, 0.83)))
            for arm, acc in zip(("b_tp_gnorm", "c_gcp", "d_slim_cwd"), accs)]
    spread = {what: (n, mean, std) for _, what, n, mean, std in report.seed_spread(rows)}
    assert spread["b_tp_gnorm"] == (2, 81.0, pytest.approx(1.41, abs=0.01))
    # seed 0: c - b = +1; seed 1: d - b = +1, so the paired gap is +1 with no spread
    assert spread["best(c,d) - b"] == (2, 1.0, 0.0)


def test_a_sweep_is_named_by_its_values(bench):
    assert bench.sweep_name("m", "medium", [1, 10, 50], [0]) == (
        "m_sweep_sparsityx1-x10-x50", "medium, sweep over sparsity scales x1, x10, x50")
    assert bench.sweep_name("m", "medium", [1], [0, 1, 2]) == ("m_sweep_seed0-1-2", "medium, sweep over seeds 0, 1, 2")
    # a single value that is not the default is a fixed setting, named as such
    assert bench.sweep_name("m", "medium", [10], [0, 1]) == ("m_sweep_sparsityx10_seed0-1",
                                                            "medium, sparsity x10, sweep over seeds 0, 1")
    # two different sweeps never share a doc section
    keys = {bench.sweep_name("m", "medium", scales, seeds)[0]
            for scales, seeds in (([1, 10], [0]), ([2, 4], [0]), ([1], [0, 1]), ([1], [3, 4]), ([1, 10], [0, 1]))}
    assert len(keys) == 5


def test_bn_recalibration_override_gets_its_own_section(bench):
    assert bench.section_name(settings(bench, bn_recalibrate=0)) == ("quick_bn0", "quick, no BN re-estimation")


def test_sweep_options_refuse_repeated_values(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--sparsity-scales", "10", "10.0", "--json", ""])
    assert "--sparsity-scales lists the same value twice: 10 10" in capsys.readouterr().err


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_ablation_arms_share_exactly_the_stages_they_reuse(bench, tmp_path, scale):
    """An ablation arm copies its parent's finished stages: sound only when those stages' fingerprints are equal,
    and the arm must still differ from its parent in a later stage."""
    from prunekit.methods import RECIPES

    s = settings(bench, sparsity_scale=scale) if scale != 1.0 else settings(bench)

    def recipe(arm):
        spec = bench.recipe_config(arm, s, tmp_path)
        return RECIPES.get(spec["recipe"])(spec["config"])

    stage_index = {"1_sparse": 0, "2_prune": 1}
    for arm, stages in bench.SHARED.items():
        mine, parent = recipe(arm), recipe("d_slim_cwd" if arm.startswith("d_") else "c_gcp")
        shared = stage_index[stages[-1]]
        for i in range(shared + 1):
            assert mine.fingerprint(i) == parent.fingerprint(i), (arm, i)
        assert mine.fingerprint(2) != parent.fingerprint(2), arm


def test_attention_plus_logit_arm_adds_paper_1s_output_kd(bench, tmp_path):
    from prunekit.methods.stages import DistillConfig

    distill = DistillConfig(**bench.recipe_config("c_distill_at_logit", settings(bench), tmp_path)
                            ["config"]["stage3"]["distill"])
    assert (distill.feature_loss, distill.logit_weight, distill.temperature) == ("attention", 1.0, 3.0)


def test_seed_spread_pairs_each_ablation_within_a_seed(report):
    accs = {0: {"c_gcp": 0.80, "c_distill_none": 0.79}, 1: {"c_gcp": 0.84, "c_distill_none": 0.83}}
    rows = [{"arm": arm, "accuracy": acc, "sparsity_scale": 1.0, "seed": seed}
            for seed, by_arm in accs.items() for arm, acc in by_arm.items()]
    spread = {what: (n, mean, std) for _, what, n, mean, std in report.seed_spread(rows)}
    # the arms spread by 2.83 points over seeds, but the paired difference is +1 point both times
    assert spread["c_gcp"][2] == pytest.approx(2.83, abs=0.01)
    assert spread["spatial attention minus no distillation"] == (2, pytest.approx(1.0), pytest.approx(0.0, abs=1e-9))


def test_recipe_gap_names_what_it_compares(report):
    assert report.recipe_gap({"b_tp_gnorm": 80.0, "c_gcp": 81.0, "d_slim_cwd": 82.0}) == ("best(c,d) - b", 2.0)
    # one recipe run: its own gap, a lower bound of the target's, labelled so
    assert report.recipe_gap({"b_tp_gnorm": 80.0, "c_gcp": 80.5}) == ("c - b", 0.5)
    assert report.recipe_gap({"c_gcp": 80.5, "d_slim_cwd": 81.0}) is None
