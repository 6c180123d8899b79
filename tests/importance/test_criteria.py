"""Importance criteria and the calibration collector on a digits-trained tiny CNN and the real CIFAR ResNet-20."""
import math

import pytest
import torch
import torch.nn.functional as F

from prunekit.errors import ConfigError, UnknownNameError
from prunekit.importance import CRITERIA
from prunekit.importance.base import NORMALIZERS, create, gather, normalize
from prunekit.importance.collector import collect

from .fixtures import cifar_raw, resnet20, resnet20_inner_groups, tiny_groups, trained_tiny

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny():
    model, x, y = trained_tiny()
    return model, x[:256], y[:256]


def ce_loss(output, batch):
    return F.cross_entropy(output, batch[1])


def batches_of(x, y, size=64):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, x.shape[0], size)]


def by_id(groups):
    return {g.id: g for g in groups}


def test_l1_l2_equal_hand_sums(tiny):
    model, _, _ = tiny
    groups = tiny_groups(with_heads=True)
    l1 = create("l1").score(model, groups)
    l2 = create("l2").score(model, groups)
    w1, g1, w2 = model.conv1.weight, model.bn1.weight, model.conv2.weight
    for i in range(8):  # default: weights only (no biases, no BN running statistics)
        parts = [w1[i], g1[i:i + 1], w2[:, i]]
        assert l1["conv1"][i].item() == pytest.approx(sum(p.abs().sum().item() for p in parts), rel=1e-5)
        assert l2["conv1"][i].item() == pytest.approx(math.sqrt(sum(p.pow(2).sum().item() for p in parts)), rel=1e-5)
    with_bias = create("l1", bias=True).score(model, groups)["conv1"]
    extra = model.conv1.bias.abs() + model.bn1.bias.abs()
    torch.testing.assert_close(with_bias, l1["conv1"] + extra.detach(), rtol=1e-5, atol=1e-6)
    # the residual group sums two producers, two BNs and two consumers
    res = [model.conv2.weight.abs().sum((1, 2, 3)), model.bn2.weight.abs(), model.conv3.weight.abs().sum((1, 2, 3)),
           model.bn3.weight.abs(), model.conv3.weight.abs().sum((0, 2, 3)), model.fc1.weight.abs().sum(0)]
    torch.testing.assert_close(l1["res"], sum(res).detach(), rtol=1e-5, atol=1e-6)
    worst = create("l1", reduction="max").score(model, groups)["res"]
    torch.testing.assert_close(worst, torch.stack(res).max(0).values.detach(), rtol=1e-5, atol=1e-6)
    # a head owns 4 rows of fc1 and 4 columns of fc2
    heads = (model.fc1.weight.abs().sum(1).view(3, 4).sum(1) + model.fc2.weight.abs().sum(0).view(3, 4).sum(1))
    torch.testing.assert_close(l1["fc1_heads"], heads.detach(), rtol=1e-5, atol=1e-6)


def test_gather_follows_index_map(tiny):
    model, _, _ = tiny
    member = tiny_groups()[1].members[-1]  # fc1.weight, dim 1, as consumer
    member.index_map = torch.tensor([[3], [0], [7]])
    rows = gather(model.fc1.weight, member)
    assert rows.shape == (3, 12)
    torch.testing.assert_close(rows[0], model.fc1.weight[:, 3].detach())
    member.index_map = torch.tensor([[16]])
    with pytest.raises(ConfigError, match="fc1.weight"):
        gather(model.fc1.weight, member)


def test_bn_scale_is_abs_gamma(tiny):
    model, _, _ = tiny
    scores = create("bn_scale").score(model, tiny_groups())
    torch.testing.assert_close(scores["conv1"], model.bn1.weight.abs().detach())
    torch.testing.assert_close(scores["res"], (model.bn2.weight.abs() + model.bn3.weight.abs()).detach())
    assert "fc1" not in scores  # no BatchNorm in that group: no signal, left to the allocator to skip


def test_taylor_and_hessian_match_manual_gradients(tiny):
    model, x, y = tiny
    groups = tiny_groups()
    batch = (x[:32], y[:32])
    stats = collect(model, [batch], {"grads", "fisher"}, loss_fn=ce_loss, groups=groups)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(batch[0]), batch[1]), list(params.values()))
    g = dict(zip(params, grads))
    w = params
    expected = ((w["fc1.weight"] * g["fc1.weight"]).abs().sum(1)
                + (w["fc2.weight"] * g["fc2.weight"]).abs().sum(0)).detach()
    taylor = create("taylor").score(model, groups, stats)
    torch.testing.assert_close(taylor["fc1"], expected, rtol=1e-4, atol=1e-7)
    # the fc2 gradient of a known loss, by hand: d/dW2 mean_b CE = mean_b (softmax - onehot) h^T
    h = F.relu(model.fc1(_pooled(model, batch[0])))
    delta = (F.softmax(model(batch[0]), 1) - F.one_hot(batch[1], 10)) / batch[0].shape[0]
    torch.testing.assert_close(stats.grads["fc2"]["weight"], (delta.t() @ h).detach(), rtol=1e-4, atol=1e-6)
    hess = create("hessian").score(model, groups, stats)
    obd = 0.5 * ((w["fc1.weight"] ** 2 * g["fc1.weight"] ** 2).sum(1) + (w["fc2.weight"] ** 2 * g["fc2.weight"] ** 2).sum(0))
    torch.testing.assert_close(hess["fc1"], obd.detach(), rtol=1e-4, atol=1e-9)
    # without stats, Taylor reads .grad left by the caller's own backward
    model.zero_grad()
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    torch.testing.assert_close(create("taylor").score(model, groups)["fc1"], expected, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ConfigError, match="collect"):
        create("hessian").score(model, groups)


def _pooled(model, x):
    y = model.bn2(model.conv2(F.relu(model.bn1(model.conv1(x)))))
    return F.relu(y + model.bn3(model.conv3(F.relu(y)))).mean((2, 3))


def test_fisher_per_sample_is_mean_squared_sample_gradient(tiny):
    model, x, y = tiny
    groups = tiny_groups()
    stats = collect(model, [(x[:6], y[:6])], {"fisher"}, loss_fn=ce_loss, groups=groups, fisher_mode="sample")
    assert stats.backward_passes == 6
    squares = torch.zeros_like(model.fc2.weight)
    for i in range(6):
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), [model.fc2.weight])
        squares += grad ** 2
    torch.testing.assert_close(stats.fisher["fc2"]["weight"], squares / 6, rtol=1e-4, atol=1e-9)


def test_fpgm_ranks_a_duplicated_filter_lowest(tiny):
    model, _, _ = tiny
    original = model.conv1.weight.detach().clone()
    try:
        q, _ = torch.linalg.qr(torch.randn(9, 9, generator=torch.Generator().manual_seed(0)))
        filters = q[:8].clone()  # orthonormal filters: every pair at distance sqrt(2)
        filters[5] = filters[3]  # ...except a duplicated one
        with torch.no_grad():
            model.conv1.weight.copy_(filters.view(8, 1, 3, 3))
        scores = create("fpgm").score(model, tiny_groups())["conv1"]
        assert set(torch.argsort(scores)[:2].tolist()) == {3, 5}
        assert scores[3].item() == pytest.approx(6 * math.sqrt(2), rel=1e-4)
        assert scores[0].item() == pytest.approx(7 * math.sqrt(2), rel=1e-4)
    finally:
        with torch.no_grad():
            model.conv1.weight.copy_(original)


def test_activation_via_collector_leaves_model_as_found(tiny):
    model, x, y = tiny
    groups = tiny_groups()
    model.train()
    model.bn3.eval()
    model.conv3.weight.requires_grad_(False)
    sentinel = torch.full_like(model.fc2.weight, 0.5)
    model.fc2.weight.grad = sentinel.clone()
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    running = model.bn1.running_mean.clone()
    try:
        stats = collect(model, batches_of(x, y), {"activations", "grads"}, loss_fn=ce_loss, groups=groups,
                        max_batches=3)
        assert stats.batches == 3 and stats.samples == 192
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert all(not m._forward_hooks for m in model.modules())
        torch.testing.assert_close(model.fc2.weight.grad, sentinel)
        assert all(p.grad is None for n, p in model.named_parameters() if n != "fc2.weight")
        torch.testing.assert_close(model.bn1.running_mean, running)  # ran in eval mode: BN stats untouched
        assert "weight" in stats.grads["conv3"]  # a frozen parameter of a group still gets its gradient
    finally:
        model.eval()
        model.conv3.weight.requires_grad_(True)
        model.fc2.weight.grad = None
    with torch.no_grad():
        conv1 = torch.cat([model.conv1(x[i:i + 64]) for i in (0, 64, 128)])
        fc1 = torch.cat([model.fc1(_pooled(model, x[i:i + 64])) for i in (0, 64, 128)])
    torch.testing.assert_close(stats.activations["conv1"], conv1.abs().mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats.activations["fc1"], fc1.abs().mean(0), rtol=1e-4, atol=1e-6)
    scores = create("activation").score(model, groups, stats)
    torch.testing.assert_close(scores["conv1"], conv1.abs().mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
    expected_res = stats.activations["conv2"] + stats.activations["conv3"]
    torch.testing.assert_close(scores["res"], expected_res)
    with pytest.raises(ConfigError, match="conv1"):
        create("activation").score(model, groups, None)


def test_collector_restores_model_when_a_batch_fails(tiny):
    model, x, y = tiny
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    def bad_loss(output, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect(model, [(x[:8], y[:8])], {"grads", "activations"}, loss_fn=bad_loss, groups=tiny_groups())
    assert all(not m._forward_hooks for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model.training
    with pytest.raises(ConfigError, match="unknown calibration"):
        collect(model, [], {"hessians"})


@pytest.mark.parametrize("name", CRITERIA.names())
def test_every_registered_criterion_conforms(tiny, name):
    if name == "sensitivity":  # scores come from curves measured on traced groups, not these hand-made ones
        pytest.skip("reads measured sensitivity curves: covered by tests/planning/test_sensitivity.py")
    model, x, y = tiny
    groups = tiny_groups(with_heads=True)
    crit = create(name)
    stats = collect(model, batches_of(x, y), crit.requires, loss_fn=ce_loss, groups=groups, max_batches=2)
    scores = crit.score(model, groups, stats)
    assert scores, f"{name} scored no group"
    for gid, s in scores.items():
        assert s.shape == (by_id(groups)[gid].size,), (name, gid)
        assert s.dtype == torch.float32 and torch.isfinite(s).all(), (name, gid)
    if name != "random":
        assert scores["conv1"].std() > 0, f"{name} gives constant scores"
    for normalizer in NORMALIZERS:
        assert all(torch.isfinite(v).all() for v in create(name, normalizer=normalizer).score(model, groups, stats).values())


def test_registry_errors():
    with pytest.raises(UnknownNameError, match="l1"):
        create("l3")
    with pytest.raises(ConfigError, match="reduction"):
        create("l1", reduction="median")
    with pytest.raises(ConfigError, match="unknown options"):
        create("taylor", p=3)


def test_normalizers():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(normalize(s, "sum"), s / 10)
    torch.testing.assert_close(normalize(s, "max"), s / 4)
    torch.testing.assert_close(normalize(s, "minmax"), (s - 1) / 3)
    assert normalize(s, "standardization").mean().abs() < 1e-6
    torch.testing.assert_close(normalize(s, "lamp"), torch.tensor([1 / 10, 2 / 9, 3 / 7, 4 / 4]))


def test_low_scores_hurt_less_on_real_resnet20():
    """On ResNet-20 (real weights, real CIFAR-10 images) masking the lowest-scoring quarter of a block-internal
    group raises the loss less than masking the highest-scoring quarter, for every saliency criterion (not the
    random baseline, and not FPGM, which measures redundancy)."""
    model = resnet20()
    x, y = cifar_raw(64)
    groups = [g for g in resnet20_inner_groups(model) if g.id.endswith(".0.conv1")]
    stats = collect(model, [(x, y)], {"grads", "fisher", "activations"}, loss_fn=ce_loss, groups=groups)
    with torch.no_grad():
        stem = F.relu(model.bn1(model.conv1(x)))
        inputs = {"layer1": stem, "layer2": model.layer1(stem)}
        inputs["layer3"] = model.layer2(inputs["layer2"])
        assert (model.linear(model.layer3(inputs["layer3"]).mean((2, 3))).argmax(1) == y).float().mean() > 0.85
    margins, seen = {}, {}

    def loss_without(group, channels):
        key = (group.id, tuple(sorted(channels.tolist())))
        if key not in seen:
            stage = group.id.split(".")[0]
            seen[key] = _masked_loss(model, group, channels, stage, inputs[stage], y)
        return seen[key]

    for name in ("l1", "l2", "bn_scale", "taylor", "hessian", "activation"):
        scores = create(name).score(model, groups, stats)
        orders = {g.id: torch.argsort(scores[g.id]) for g in groups}
        low = sum(loss_without(g, orders[g.id][: g.size // 4]) for g in groups)
        high = sum(loss_without(g, orders[g.id][-(g.size // 4):]) for g in groups)
        margins[name] = high - low
    assert all(m > 0 for m in margins.values()), margins


def _masked_loss(model, group, channels, stage, features, y):
    """Cross-entropy with `channels` of the group's conv1/bn1 zeroed, running the model from `stage` onwards."""
    conv = model.get_submodule(group.members[0].module)
    bn = model.get_submodule(group.members[1].module)
    saved = [t.detach().clone() for t in (conv.weight, bn.weight, bn.bias)]
    try:
        with torch.no_grad():
            for t in (conv.weight, bn.weight, bn.bias):
                t[channels] = 0
            for name in ("layer1", "layer2", "layer3")[int(stage[-1]) - 1:]:
                features = getattr(model, name)(features)
            return F.cross_entropy(model.linear(features.mean((2, 3))), y).item()
    finally:
        with torch.no_grad():
            for t, s in zip((conv.weight, bn.weight, bn.bias), saved):
                t.copy_(s)
