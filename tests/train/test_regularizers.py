"""Sparsity regularizers: schedule values, the BN-L1 subgradient, group lasso against hand-derived gradients."""
import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.errors import ConfigError
from prunekit.graph.types import ChannelGroup, GroupMember
from prunekit.registry import registry
from prunekit.train.loop import TrainConfig, train
from prunekit.train.regularizers.bn_l1 import BNL1, BNL1Config
from prunekit.train.regularizers.group_lasso import GroupLasso, GroupLassoConfig
from prunekit.train.regularizers.schedules import Constant, CosineDecay, GCPVariable, LinearDecay

torch.set_num_threads(1)


def digits(n=512):
    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return TensorDataset(x, torch.tensor(d.target[:n], dtype=torch.long))


def bn_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 16, 10),
    )


# ----------------------------------------------------------------------------------------------- schedules


def test_constant_and_linear_decay_values():
    assert Constant(s=3e-3).rate(7, 10) == 3e-3
    sched = LinearDecay(s=1e-4)
    assert sched.rate(0, 100) == pytest.approx(1e-4)
    assert sched.rate(50, 100) == pytest.approx(1e-4 * 0.55)
    assert sched.rate(100, 100) == pytest.approx(1e-5)
    cos = CosineDecay(s=2.0, final=0.5)
    assert cos.rate(0, 10) == pytest.approx(2.0) and cos.rate(5, 10) == pytest.approx(1.25)
    assert cos.rate(10, 10) == pytest.approx(0.5)


def test_gcp_variable_relaxes_the_top_35_percent_after_40_percent_of_training():
    s = 1e-3
    sched = GCPVariable(s=s)
    gamma = torch.tensor([0.5, -0.05, 0.9, 0.01, -0.7, 0.3, 0.02, 0.8, -0.4, 0.06,
                          0.07, 0.6, -0.2, 0.03, 0.1, 0.04, -0.95, 0.15, 0.25, 0.08])
    assert sched.rate(0, 100, gamma) == s and sched.rate(39, 100, gamma) == s  # scalar before the relax point
    rates = sched.rate(40, 100, gamma)
    # by hand: 20 values, sorted |gamma| index floor(0.65 * 20) = 13 -> the 14th smallest |gamma| = 0.4
    mags = sorted(abs(float(v)) for v in gamma)
    threshold = mags[13]
    assert threshold == pytest.approx(0.4)
    expected = [0.01 * s if abs(float(g)) >= threshold else s for g in gamma]
    assert rates.tolist() == pytest.approx(expected)
    assert sum(r < s for r in rates.tolist()) == 7  # -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, -0.95
    custom = GCPVariable(s=s, relax_after=0.5, percentile=0.9, relaxed_factor=0.1)
    assert custom.rate(49, 100, gamma) == s
    assert sorted(custom.rate(50, 100, gamma).tolist()).count(pytest.approx(0.1 * s)) == 2
    with pytest.raises(ConfigError, match="gamma"):
        sched.rate(60, 100)


def test_registries_list_regularizers_and_schedules():
    assert registry("regularizer").get("bn_l1") is BNL1
    assert registry("regularizer").get("group_lasso") is GroupLasso
    assert registry("rate_schedule").get("gcp_variable") is GCPVariable
    assert set(registry("rate_schedule").names()) >= {"constant", "gcp_variable", "linear_decay", "cosine_decay"}


# ----------------------------------------------------------------------------------------------- BN-L1


def _grads_after_backward(model, batch):
    model.zero_grad()
    x, y = batch
    nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_bn_l1_adds_s_sign_gamma_to_selected_batchnorms_only():
    model = bn_cnn()
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(-1, 1, 16))  # mixed signs
    batch = digits(64).tensors
    before = _grads_after_backward(model, batch)
    hook = BNL1(BNL1Config(s=0.01, exclude=("4",), beta_rate=0.1, total=10))
    hook.after_backward(model, step=0, epoch=0)
    gamma, beta = model[1].weight.detach(), model[1].bias.detach()
    assert torch.allclose(model[1].weight.grad - before["1.weight"], 0.01 * torch.sign(gamma), atol=1e-7)
    assert torch.allclose(model[1].bias.grad - before["1.bias"], 0.1 * torch.sign(beta), atol=1e-7)
    assert torch.equal(model[4].weight.grad, before["4.weight"])  # excluded by pattern
    assert torch.equal(model[0].weight.grad, before["0.weight"])


def test_bn_l1_gcp_variable_uses_one_percentile_over_all_layers():
    model = bn_cnn()
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(0.1, 1.6, 16))  # all large
        model[4].weight.copy_(torch.linspace(0.01, 0.16, 16))  # all small
    hook = BNL1(BNL1Config(s=1e-2, schedule="gcp_variable", total=10))
    early, late = hook.rates(model, 0, 3), hook.rates(model, 0, 4)
    assert early == {"1": 1e-2, "4": 1e-2}
    # 32 gammas, threshold index floor(0.65 * 32) = 20 -> the 21st smallest = layer 1's 5th value (0.5)
    assert torch.equal(late["4"], torch.full((16,), 1e-2))
    assert torch.allclose(late["1"], torch.tensor([1e-2] * 4 + [1e-4] * 12))
    before = _grads_after_backward(model, digits(32).tensors)
    hook.after_backward(model, step=0, epoch=9)
    assert torch.allclose(model[1].weight.grad - before["1.weight"], late["1"] * torch.sign(model[1].weight), atol=1e-8)


def test_bn_l1_errors_name_the_problem():
    with pytest.raises(ConfigError, match="no affine BatchNorm"):
        BNL1(BNL1Config(include=("nothing*",), total=1)).after_backward(bn_cnn(), 0, 0)
    with pytest.raises(ConfigError, match="unknown schedule"):
        BNL1Config(schedule="exponential")


def test_bn_l1_sparse_training_drives_gammas_to_zero_on_digits():
    data = digits(512)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.1, device="cpu", progress=False)
    plain, sparse = bn_cnn(seed=2), bn_cnn(seed=2)
    train(plain, data, cfg)
    result = train(sparse, data, cfg, hooks=[BNL1(BNL1Config(s=0.1, schedule="linear_decay"))])

    def small_fraction(m):
        g = torch.cat([m[1].weight.detach().abs(), m[4].weight.detach().abs()])
        return float((g < 0.1).float().mean())

    assert small_fraction(sparse) >= small_fraction(plain) + 0.25
    assert result.epoch_metrics[-1]["train_loss"] < 0.5  # it still learns


# ----------------------------------------------------------------------------------------------- group lasso


class Residual(nn.Module):
    """a(x) + b(x) share output channels (a residual coupling); c consumes them; d has 2-wide channel slices."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1, bias=False)
        self.c = nn.Conv2d(4, 2, 1)
        self.d = nn.Linear(5, 6)

    def forward(self, x):
        return self.c(self.a(x) + self.b(x))


def _groups():
    ident = torch.arange(4).view(4, 1)
    g1 = ChannelGroup("a:out", 4, [
        GroupMember("a", "weight", 0, ident), GroupMember("a", "bias", 0, ident),
        GroupMember("b", "weight", 0, ident), GroupMember("c", "weight", 1, ident, role="in"),
    ])
    g2 = ChannelGroup("d:out", 3, [GroupMember("d", "weight", 0, torch.tensor([[0, 1], [2, 3], [4, 5]])),
                                   GroupMember("d", "bias", 0, torch.tensor([[0, 1], [2, 3], [4, 5]]))])
    return [g1, g2]


def test_group_lasso_gradient_matches_hand_derivation():
    torch.manual_seed(0)
    model = Residual()
    with torch.no_grad():  # channel 2 of group 1 is exactly zero everywhere: its subgradient must be 0, not NaN
        model.a.weight[2] = 0
        model.a.bias[2] = 0
        model.b.weight[2] = 0
        model.c.weight[:, 2] = 0
    lam = 0.03
    hook = GroupLasso(_groups(), GroupLassoConfig(lam=lam, total=1))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    hook.after_backward(model, 0, 0)

    a_w, a_b, b_w, c_w = (t.detach() for t in (model.a.weight, model.a.bias, model.b.weight, model.c.weight))
    expected = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for i in range(4):  # explicit loops over every element of channel i
        sq = 0.0
        sq += sum(float(a_w[i, j, 0, 0]) ** 2 for j in range(3)) + float(a_b[i]) ** 2
        sq += sum(float(b_w[i, j, 0, 0]) ** 2 for j in range(3))
        sq += sum(float(c_w[o, i, 0, 0]) ** 2 for o in range(2))
        r = math.sqrt(sq)
        coef = 0.0 if r == 0 else lam / r
        for j in range(3):
            expected["a.weight"][i, j, 0, 0] = coef * a_w[i, j, 0, 0]
            expected["b.weight"][i, j, 0, 0] = coef * b_w[i, j, 0, 0]
        expected["a.bias"][i] = coef * a_b[i]
        for o in range(2):
            expected["c.weight"][o, i, 0, 0] = coef * c_w[o, i, 0, 0]
    d_w, d_b = model.d.weight.detach(), model.d.bias.detach()
    for i in range(3):
        rows = (2 * i, 2 * i + 1)
        sq = sum(float(d_w[row, j]) ** 2 for row in rows for j in range(5)) + sum(float(d_b[row]) ** 2 for row in rows)
        r = math.sqrt(sq)
        for row in rows:
            expected["d.weight"][row] = lam / r * d_w[row]
            expected["d.bias"][row] = lam / r * d_b[row]
    expected["c.bias"].zero_()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-7), name
    assert torch.all(model.a.weight.grad[2] == 0) and torch.isfinite(model.a.weight.grad).all()

    # the differentiable penalty agrees with the hook away from the kink
    model2 = Residual()
    model2.zero_grad()
    hook.penalty(model2).backward()
    auto = {n: p.grad.clone() for n, p in model2.named_parameters() if p.grad is not None}
    for p in model2.parameters():
        p.grad = torch.zeros_like(p)
    hook.after_backward(model2, 0, 0)
    for n, g in auto.items():
        assert torch.allclose(dict(model2.named_parameters())[n].grad, g, atol=1e-6), n


def _fit_rank2_target(hook):
    """Fit a map that needs only 2 of the 4 coupled channels; returns (model, final mse)."""
    torch.manual_seed(1)
    model = Residual()
    x = torch.randn(128, 3, 4, 4)
    target = torch.einsum("oc,bchw->bohw", torch.randn(2, 3), x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(600):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        if hook is not None:
            hook.after_backward(model, 0, 0)
        opt.step()
    return model, float(loss.detach())


def test_group_lasso_sparsifies_coupled_channels_together():
    hook = GroupLasso(_groups()[:1], GroupLassoConfig(lam=0.05, total=1))
    plain, plain_loss = _fit_rank2_target(None)
    model, loss = _fit_rank2_target(hook)
    assert hook.norms(plain)["a:out"].min() > 0.3  # without the penalty every channel stays in use
    norms = hook.norms(model)["a:out"].detach()
    dead = norms < 0.01
    assert int(dead.sum()) == 2 and norms[~dead].min() > 0.5, norms
    assert loss < 0.01 and plain_loss < 0.01
    # a dead group channel is dead in every member at once (producer a, residual partner b, consumer c)
    for i in torch.nonzero(dead).flatten().tolist():
        for t in (model.a.weight[i], model.a.bias[i], model.b.weight[i], model.c.weight[:, i]):
            assert t.abs().max() < 0.01


def test_group_lasso_rejects_unknown_names():
    bad = ChannelGroup("x", 2, [GroupMember("nope", "weight", 0, torch.arange(2).view(2, 1))])
    with pytest.raises(ConfigError, match="nope"):
        GroupLasso([bad], GroupLassoConfig(total=1)).after_backward(Residual(), 0, 0)
