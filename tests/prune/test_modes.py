"""Soft masks, iterative pruning, bias folding and budgets."""
import copy

import torch
from torch import nn

import prunekit
from prunekit.compensate.bias_fold import fold_removed_channels
from prunekit.models import build, example_inputs
from prunekit.prune.apply import remove_channels
from prunekit.prune.iterative import iterative_prune
from prunekit.prune.soft import apply_soft, make_physical


def test_soft_masks_equal_removal_and_become_physical():
    model = build("cifar_resnet20", pretrained=False).eval()
    x = example_inputs("cifar_resnet20")
    plan = prunekit.plan(model, x, ratio=0.5)
    hard = prunekit.apply(model, plan, x)
    soft = apply_soft(copy.deepcopy(model), plan, x)
    assert torch.allclose(soft(x), hard(x), atol=1e-5)
    # masked weights receive no gradient (on a copy: a train-mode pass updates BatchNorm statistics)
    trained = copy.deepcopy(soft).train()
    trained(x).sum().backward()
    conv = trained.layer1[0].conv1
    removed = plan.removed["layer1.0.conv1"]
    grad = conv.parametrizations.weight.original.grad
    assert grad[removed].abs().max() == 0 and grad.abs().max() > 0
    physical = make_physical(soft, plan, x)
    assert physical.layer1[0].conv1.out_channels == 16 - len(removed)
    assert torch.allclose(physical(x), hard(x), atol=1e-5)


def test_iterative_pruning_composes_into_one_replayable_plan():
    model = build("digits_cnn").eval()
    x = example_inputs("digits_cnn")
    calls = []
    pruned, plan = iterative_prune(model, x, 0.5, steps=3, between_steps=lambda m, k: calls.append(k))
    assert calls == [0, 1]
    replay = prunekit.apply(model, plan, x)
    assert torch.equal(replay(x), pruned(x))
    for gid, size in (("conv1", 32), ("conv2", 64), ("conv3", 64)):  # each step floors, so up to 3 units short
        assert size // 2 - 3 <= len(plan.removed[gid]) <= size // 2


def test_bias_folding_keeps_outputs_when_zero_scale_channels_are_removed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8, 4))
    x = torch.randn(2, 3, 6, 6)
    model.eval()
    with torch.no_grad():
        model[1].weight[:8] = 0.0  # zero scaling factor: the channel outputs relu(beta), a constant
        model[1].bias[:8] = torch.rand(8) + 0.1
        model[4].weight[:4] = 0.0
        model[4].bias[:4] = torch.rand(4) + 0.1
        model[4].running_mean.uniform_()
    reference = model(x)
    an = prunekit.analyze(model, x)
    removed = {"0": torch.arange(8), "3": torch.arange(4)}
    folded = copy.deepcopy(model)
    report = fold_removed_channels(folded, an.groups, removed, x)
    assert set(report["folded"]) == {"3", "6"} and not report["varying"]
    remove_channels(folded, an.groups, removed)
    assert torch.allclose(folded(x), reference, atol=1e-5)
    unfolded = copy.deepcopy(model)
    remove_channels(unfolded, an.groups, removed)
    assert (unfolded(x) - reference).abs().max() > 1e-3  # without folding the constants are lost


def test_macs_budget_is_hit_within_two_percent():
    """Refinable allocators hit a MACs budget within 2%; uniform stays uniform and lands on its nearest widths."""
    from prunekit.metrics.macs import count_macs

    model = build("cifar_resnet56_b").eval()
    x = example_inputs("cifar_resnet56_b", batch=1)
    for allocator, round_to in (("global", None), ("global", 8), ("uniform", None)):
        plan = prunekit.plan(model, x, budget=prunekit.Budget(target="macs", keep_fraction=0.5), round_to=round_to,
                             allocator=allocator)
        pruned = prunekit.apply(model, plan, x, verify=False)
        kept = count_macs(pruned, x) / count_macs(model, x)
        convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
        if allocator == "uniform":
            # ResNet-56-B's uniform widths jump from 0.526 to 0.473 of the MACs: the closer one is kept, and every
            # layer of a stage keeps the same width (one width per original width: 16, 32, 64).
            assert abs(kept - 0.5) <= 0.03, kept
            assert len({m.out_channels for m in convs}) == 3, sorted({m.out_channels for m in convs})
            continue
        assert abs(kept - 0.5) <= 0.02 * 0.5 + 1e-9, (allocator, round_to, kept)
        if round_to:
            assert all(m.out_channels % 8 == 0 for m in convs)
