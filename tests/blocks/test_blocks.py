"""Block pruning (prunekit.blocks): layout, curves, allocation, the block-sparse layer, plans and replay."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.blocks import (BlockPlan, BlockShape, BlockSparseLinear, LPViTConfig, collect_block_stats, convert,
                             find_targets, layer_curve, params_cost, plan_blocks, slope_match, uniform)
from prunekit.blocks.allocate import macs_cost
from prunekit.blocks.cost import LatencyTable
from prunekit.blocks.curves import distortion_curve, removal_order
from prunekit.blocks.stats import weight_stats
from prunekit.errors import ConfigError
from prunekit.models.hf import build_from_config


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32)).eval()


def _batches(n: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 64, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("block", ["16x16", "32x32", "32x64"])
@pytest.mark.parametrize("balanced", [True, False])
def test_block_sparse_linear_equals_masked_dense(block, balanced):
    b = BlockShape.parse(block)
    torch.manual_seed(0)
    linear = nn.Linear(128, 192)
    rows, cols = 192 // b.rows, 128 // b.cols
    if balanced:
        keep = torch.zeros(rows, cols, dtype=torch.bool)
        for r in range(rows):
            keep[r, torch.randperm(cols)[: max(1, cols // 2)]] = True
    else:
        keep = torch.rand(rows, cols) < 0.4
        keep[0] = False  # a block-row with nothing kept
    module = BlockSparseLinear.from_linear(linear, keep, b)
    mask = keep.repeat_interleave(b.rows, 0).repeat_interleave(b.cols, 1).float()
    x = torch.randn(3, 7, 128)
    expected = nn.functional.linear(x, linear.weight * mask, linear.bias)
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.dense_weight(), linear.weight.detach() * mask)


def test_block_sparse_linear_trains_only_kept_blocks():
    torch.manual_seed(0)
    linear = nn.Linear(64, 64)
    keep = torch.rand(4, 4) < 0.5
    keep[:, 0] = True
    module = BlockSparseLinear.from_linear(linear, keep, "16x16")
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(torch.randn(8, 64)).pow(2).sum().backward()
    opt.step()
    removed = ~keep.repeat_interleave(16, 0).repeat_interleave(16, 1)
    assert module.dense_weight()[removed].abs().max() == 0


def test_find_targets_covers_linear_and_mha_and_refuses_bad_shapes():
    vit_like = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True)
    targets, skipped = find_targets(vit_like, "16x16")
    names = {t.param for t in targets}
    assert names == {"self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"}
    assert not [t for t in targets if t.param == "self_attn.in_proj_weight"][0].swappable
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 10))
    targets, skipped = find_targets(model, "32x32")
    assert [t.param for t in targets] == ["0.weight"] and skipped == ["1.weight"]
    with pytest.raises(ConfigError, match="1.weight"):
        find_targets(model, "32x32", include=("1",))
    with pytest.raises(ConfigError, match="block shape"):
        BlockShape.parse("32by32")


def test_balanced_order_keeps_equal_blocks_per_row():
    scores = torch.rand(4, 6)
    order = removal_order(scores, "balanced")
    assert sorted(order.tolist()) == list(range(24))
    for k in range(0, 25, 4):
        removed_rows = torch.bincount(order[:k] // 6, minlength=4)
        assert (removed_rows == k // 4).all()
        # each row loses its own weakest blocks first
        for r in range(4):
            mine = [int(i) % 6 for i in order[:k] if int(i) // 6 == r]
            assert set(mine) == set(torch.argsort(scores[r])[: k // 4].tolist())


def test_fisher_curve_matches_direct_computation():
    """The incremental blockwise curve equals 1/2 mean_b (g_b . dW)^2 + damping computed on dense tensors."""
    model = _mlp()
    targets, _ = find_targets(model, "16x16")
    batches = _batches()
    stats = collect_block_stats(model, targets, batches)
    t = targets[1]
    s = stats[t.param]
    order = removal_order(torch.rand(*t.grid), "free")
    curve = distortion_curve(s, order, "fisher", damp=1e-3)
    # direct: per-batch gradients of the output energy
    grads = []
    for x in batches:
        m = copy.deepcopy(model)
        loss = m(x).pow(2).mean()
        (g,) = torch.autograd.grad(loss, [dict(m.named_parameters())[t.param]])
        grads.append(g)
    w = dict(model.named_parameters())[t.param].detach()
    for k in (0, 3, 10, t.num_blocks):
        removed = order[:k]
        keep = torch.ones(t.num_blocks)
        keep[removed] = 0
        mask = keep.view(t.grid).repeat_interleave(16, 0).repeat_interleave(16, 1)
        dw = -w * (1 - mask)
        direct = 0.5 * torch.stack([(g * dw).sum() ** 2 for g in grads]).mean() + 0.5e-3 * (dw ** 2).sum()
        assert float(curve[k]) == pytest.approx(float(direct), rel=1e-4, abs=1e-12)


def test_slope_match_meets_budget_and_prefers_cheap_layers():
    model = _mlp()
    targets, _ = find_targets(model, "16x16")
    stats = collect_block_stats(model, targets, _batches())
    # make the last layer 1000x more sensitive: slope matching must prune it less than the others
    stats[targets[-1].param].batch_sums *= 1000.0
    curves = {t.param: layer_curve(stats[t.param]) for t in targets}
    for keep in (0.7, 0.5, 0.3):
        result = slope_match(targets, curves, keep, params_cost)
        assert result.cost <= result.target_cost + 1e-9
        assert result.relative_error < 0.05
        frac = {p: k / next(t.num_blocks for t in targets if t.param == p) for p, k in result.removed.items()}
        assert frac[targets[-1].param] < min(frac[t.param] for t in targets[:-1])
    flat = uniform(targets, curves, 0.5)
    assert all(k == t.num_blocks // 2 for t, k in zip(targets, flat.removed.values()))


def test_latency_cost_keeps_dense_where_sparse_is_slower():
    model = nn.Sequential(nn.Linear(64, 64))
    (t,), _ = find_targets(model, "16x16")
    table = LatencyTable(256, 1, {LatencyTable.key(t): {"dense": 1.0, "sparse": {"1": 0.3, "2": 0.9, "4": 1.6}}})
    assert table.cost(t, 16) == 1.0
    assert table.cost(t, 4) == pytest.approx(0.3)
    assert table.cost(t, 6) == pytest.approx(0.6)  # halfway between 1 and 2 kept per row
    assert table.cost(t, 12) == 1.0 and table.keep_dense(t, 12) and not table.keep_dense(t, 4)


def test_plan_save_load_replay_and_convert(tmp_path):
    model = build_from_config("bert", hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    ids = torch.randint(0, 256, (2, 12))
    batches = [{"input_ids": torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(i))}
               for i in range(3)]
    config = LPViTConfig(block="32x32", keep_fraction=0.5, layout="balanced", budget="macs", exclude=("pooler*",))
    planning = plan_blocks(model, config, batches)
    plan = planning.plan
    assert 0.45 <= plan.fraction_removed() <= 0.5
    pruned = plan.apply(copy.deepcopy(model))
    folder = plan.save(tmp_path / "pruned", pruned, original=model)
    assert not any(p.suffix in (".pt", ".pth", ".pkl") for p in folder.iterdir())
    fresh = build_from_config("bert", hidden_size=64, intermediate_size=128, num_hidden_layers=2, seed=5)
    loaded = BlockPlan.load(folder, fresh)
    assert loaded.removed == plan.removed
    with torch.no_grad():
        expected = pruned(input_ids=ids).last_hidden_state
        torch.testing.assert_close(fresh(input_ids=ids).last_hidden_state, expected)
        # replay onto a freshly built original: masks alone reproduce the pruned model
        replayed = BlockPlan.load(folder).apply(copy.deepcopy(model))
        torch.testing.assert_close(replayed(input_ids=ids).last_hidden_state, expected)
        converted = copy.deepcopy(model)
        names = convert(converted, plan)
        assert len(names) == len(plan.removed)
        assert all(isinstance(converted.get_submodule(n), BlockSparseLinear) for n in names)
        torch.testing.assert_close(converted(input_ids=ids).last_hidden_state, expected, rtol=1e-4, atol=1e-4)
    other = build_from_config("bert", hidden_size=64, intermediate_size=128, num_hidden_layers=3)
    with pytest.raises(ConfigError, match="another model"):
        BlockPlan.load(folder, other)


def test_task_loss_and_hf_decoder_mlp_targets():
    model = build_from_config("llama", hidden_size=64, intermediate_size=128)
    batches = [torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    config = LPViTConfig(block="16x16", include=("*.mlp.*",), keep_fraction=0.6)
    planning = plan_blocks(model, config, batches, loss_fn=lambda m, b: m(input_ids=b, labels=b).loss)
    assert set(planning.plan.removed) == {f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2)
                                          for p in ("gate", "up", "down")}
    assert planning.allocation.cost <= planning.allocation.target_cost
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # flags restored, no grads left


def test_config_and_data_free_refusals():
    with pytest.raises(ConfigError, match="score"):
        LPViTConfig(score="nope")
    with pytest.raises(ConfigError, match="keep_fraction"):
        LPViTConfig(keep_fraction=0.0)
    model = _mlp()
    with pytest.raises(ConfigError, match="calibration batches"):
        plan_blocks(model, LPViTConfig(block="16x16"))
    with pytest.raises(ConfigError, match="latency"):
        plan_blocks(model, LPViTConfig(block="16x16", budget="latency", score="magnitude"))
    planning = plan_blocks(model, LPViTConfig(block="16x16", score="magnitude", distortion="diag",
                                              allocation="uniform"))
    assert planning.plan.fraction_removed() == pytest.approx(0.5, abs=0.05)
    targets, _ = find_targets(model, "16x16")
    assert macs_cost(10)(targets[0], 2) == 2 * 256 * 10
    assert weight_stats(model, targets)[targets[0].param].abs_weight.shape == targets[0].grid


def test_measured_curves_match_single_layer_pruning_and_restore_weights():
    from prunekit.blocks.measured import measured_curves

    model = _mlp()
    targets, _ = find_targets(model, "16x16")
    batches = _batches(2)
    stats = collect_block_stats(model, targets, batches)
    taylor = {t.param: layer_curve(stats[t.param]) for t in targets}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curves = measured_curves(model, targets, taylor, batches[:1], grid=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # every layer restored exactly
    t = targets[0]
    curve = curves[t.param]
    k = int(curve.allowed[-1])  # a measured grid point: every block of the layer removed
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned[0].weight.zero_()
        direct = float((pruned(batches[0]) - model(batches[0])).pow(2).mean())
    assert float(curve.distortion[k]) == pytest.approx(direct, rel=1e-5)
    assert (curve.distortion[1:] >= curve.distortion[:-1]).all()  # non-decreasing
    result = slope_match(targets, curves, 0.5)
    assert result.cost <= result.target_cost + 1e-9
    planning = plan_blocks(model, LPViTConfig(block="16x16", curves="measured", grid=3, measure_batches=1), batches)
    assert torch.equal(planning.curves[t.param].order, curve.order)
    assert planning.allocation.cost <= planning.allocation.target_cost


def test_recovery_keeps_masks_and_reduces_distillation_loss():
    from prunekit.blocks.recover import RecoveryConfig, recover

    teacher = _mlp()
    planning = plan_blocks(teacher, LPViTConfig(block="16x16", keep_fraction=0.5), _batches())
    student = planning.plan.apply(copy.deepcopy(teacher))
    losses = recover(student, teacher, planning.plan, _batches(4, seed=3), RecoveryConfig(lr=1e-3, epochs=15))
    assert losses[-1] < losses[0]
    for t in planning.plan.targets(student):
        keep = planning.plan.keep_grid(t).repeat_interleave(16, 0).repeat_interleave(16, 1)
        assert dict(student.named_parameters())[t.param][~keep].abs().max() == 0


@pytest.mark.filterwarnings("ignore:Sparse BSR tensor support")
def test_bsr_path_used_on_cuda_matches_gather_path():
    """The CUDA path (torch.sparse BSR) computes the same product; its math is checked here on the CPU."""
    torch.manual_seed(0)
    module = BlockSparseLinear.from_linear(nn.Linear(64, 96), torch.rand(6, 4) < 0.5, "16x16")
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(module._cuda_bsr(x), module._gather_bmm(x), rtol=1e-5, atol=1e-5)
        module.packed.mul_(2.0)  # the cached BSR weight is rebuilt after the weights change
        torch.testing.assert_close(module._cuda_bsr(x), module._gather_bmm(x), rtol=1e-5, atol=1e-5)
