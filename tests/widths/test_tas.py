"""The TAS search wrapper (prunekit.widths.tas): cost model against the engine, gradients, per-candidate BN, the
masked supernet against the engine's pruned model, the search moving toward its target, the derived network."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.metrics.macs import count_macs
from prunekit.widths.tas import (CandidateBatchNorm, TASSearchConfig, TASSupernet, build_searched, search,
                                 searchable_groups, split_halves, tas_width_config, width_choices)

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Stem, a residual block (its stream is one tied group), a depthwise-separable pair, a conv without BN, head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                                 nn.Conv2d(24, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.plain = nn.Conv2d(32, 20, 3, stride=2, padding=1)  # no BN: masked at its output
        self.fc = nn.Linear(20, 10)

    def forward(self, x):
        h = self.stem(x)
        h = F.relu(h + self.res(h))
        h = self.dw(self.expand(h))
        h = F.relu(self.plain(h))
        return self.fc(h.mean((2, 3)))


def _setup(seed=0):
    torch.manual_seed(seed)
    model = TinyNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so per-candidate BN copies matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(1, 3, 16, 16)
    analysis = prunekit.analyze(model, x)
    searched = searchable_groups(analysis.groups)
    return model, x, analysis, searched


def _random_widths(searched, gen):
    return {s.id: s.widths[int(torch.randint(len(s.widths), (1,), generator=gen))] for s in searched}


def test_search_space_comes_from_the_engine_groups():
    model, x, analysis, searched = _setup()
    ids = {s.id for s in searched}
    refused = {g.id for g in analysis.groups if not g.prunable}
    assert ids and not ids & refused and "fc" not in ids  # the classifier's output is never searched
    stream = [s for s in searched if any(m.module == "res.3" and m.role == "out" for m in s.group.members)]
    assert len(stream) == 1 and any(m.module == "stem.0" for m in stream[0].group.members)  # residual tie, once
    assert width_choices(64, (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) == (19, 26, 32, 38, 45, 51, 58, 64)
    assert width_choices(4, (0.3, 0.5, 1.0)) == (1, 2, 4)  # small groups: fewer, distinct candidates
    with pytest.raises(ConfigError, match="fractions"):
        searchable_groups(analysis.groups, fractions=(0.5, 1.5))


def test_expected_macs_equal_the_engine_built_models_macs():
    model, x, analysis, searched = _setup()
    net = TASSupernet(model, searched, x)
    gen = torch.Generator().manual_seed(1)
    assert net.macs_of({}) == pytest.approx(count_macs(model, x))
    for _ in range(2):
        widths = _random_widths(searched, gen)
        with torch.no_grad():  # a near one-hot distribution on the chosen candidates
            for s, logits in zip(searched, net.logits):
                logits.fill_(-30.0)[s.widths.index(widths[s.id])] = 30.0
        assert net.argmax_widths() == widths
        config = tas_width_config(analysis, widths, model, x)
        small, _ = build_searched(config, analysis, copy.deepcopy(model), x)
        real = count_macs(small, x)
        assert float(net.expected_macs().detach()) == pytest.approx(real, rel=1e-4)
        assert net.macs_of(widths) == pytest.approx(real, rel=1e-9)


def test_masked_supernet_at_fixed_widths_is_the_engine_pruned_model():
    """Per-candidate BN copies + channel masks reproduce, at any fixed widths, the engine's physically pruned model
    with the same weights (the kept channels are the first ones): the masks align candidates correctly."""
    model, x, analysis, searched = _setup()
    net = TASSupernet(model, searched, x).eval()
    xb = torch.randn(4, 3, 16, 16)
    net.set_widths({s.id: s.size for s in searched})
    assert torch.allclose(net(xb), model(xb), atol=1e-6)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        widths = _random_widths(searched, gen)
        plan = tas_width_config(analysis, widths, model, x).to_plan(analysis, model)
        pruned = prunekit.apply(copy.deepcopy(model), plan, x)
        net.set_widths(widths)
        assert torch.allclose(net(xb), pruned(xb), atol=1e-5)
    with pytest.raises(ConfigError, match="not a candidate"):
        net.set_widths({searched[0].id: searched[0].size + 1})


def test_gradients_reach_every_logit():
    model, x, analysis, searched = _setup()
    torch.manual_seed(0)
    net = TASSupernet(model, searched, x).train()
    net.tau = 1.0
    xb, yb = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    F.cross_entropy(net(xb), yb).backward()
    grads = [p.grad for p in net.arch_parameters()]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)  # the task loss reaches the widths
    for p in net.arch_parameters():
        p.grad = None
    torch.log(net.expected_macs()).backward()  # so does the cost, and it favours narrower widths
    for s, p in zip(searched, net.arch_parameters()):
        assert p.grad[-1] > 0 > p.grad[0]  # d log E[MACs] / d logit: widest up, narrowest down


def test_each_candidate_width_has_its_own_batchnorm():
    model, x, analysis, searched = _setup()
    net = TASSupernet(model, searched, x).train()
    cbns = {n: m for n, m in net.model.named_modules() if isinstance(m, CandidateBatchNorm)}
    assert cbns and all(len(m.bns) == len(next(s for s in searched if s.id == m.group_id).widths)
                        for m in cbns.values())
    name, cbn = next(iter(cbns.items()))
    group = next(s for s in searched if s.id == cbn.group_id)
    before = [bn.running_mean.clone() for bn in cbn.bns]
    widths = {s.id: s.widths[1] for s in searched}
    net.set_widths(widths)
    with torch.no_grad():
        net(torch.randn(8, 3, 16, 16))
    changed = [not torch.equal(b, bn.running_mean) for b, bn in zip(before, cbn.bns)]
    assert changed == [j == 1 for j in range(len(group.widths))]  # only the selected width's statistics move
    assert not any(isinstance(m, CandidateBatchNorm) for m in model.modules())  # the input model is untouched


def _digits(n=400):  # 200 images per half
    from prunekit.data import load

    data = load("digits", split="train", augment=None)
    return torch.utils.data.Subset(data, list(range(n)))


def test_search_moves_the_widths_into_the_target_band_and_resumes(tmp_path):
    from prunekit.models import build

    model = build("digits_cnn").eval()
    x = torch.randn(1, 1, 8, 8)
    analysis = prunekit.analyze(model, x)
    searched = searchable_groups(analysis.groups)
    torch.manual_seed(0)
    net = TASSupernet(model, searched, x)
    with torch.no_grad():  # start at full width: the search must move down to R
        for p in net.logits:
            p[-1] += 1.0
    start = net.macs_of(net.argmax_widths()) / net.cost.full
    cfg = TASSearchConfig(keep_macs=0.5, tolerance=0.05, epochs=2, batch_size=25, arch_lr=0.3, log_every=1)
    straight = copy.deepcopy(net)
    result = search(straight, _digits(), cfg, seed=0)
    assert start == pytest.approx(1.0) and result.complete
    keep = [h["argmax_keep"] for h in result.history]
    assert len(keep) == result.steps == 16
    assert min(abs(k - 0.5) for k in keep[-4:]) < 0.1 and result.history[-1]["expected_keep"] < 0.6  # reached R
    assert 0.45 <= result.argmax_macs / result.full_macs <= 0.5  # derived widths inside [R - t, R]
    assert result.history[-1]["tau"] == pytest.approx(0.1) and result.history[0]["tau"] > 4.5
    # interrupted after 5 steps and resumed: the same widths and logits as the straight run
    stopped = search(copy.deepcopy(net), _digits(), TASSearchConfig(**{**cfg.__dict__, "max_steps": 5}), seed=0,
                     checkpoint_dir=str(tmp_path / "ckpt"))
    assert not stopped.complete and stopped.steps == 5
    resumed_net = copy.deepcopy(net)
    resumed = search(resumed_net, _digits(), cfg, seed=0, checkpoint_dir=str(tmp_path / "ckpt"))
    assert resumed.complete and resumed.resumed_from.endswith("step-00000005")
    assert resumed.widths == result.widths
    for a, b in zip(resumed_net.arch_parameters(), straight.arch_parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_split_is_half_and_half_and_disjoint():
    a, b = split_halves(list(range(11)), seed=3)
    assert len(a) == len(b) == 5 and not set(a.indices) & set(b.indices)


def test_derived_config_builds_a_fresh_model_that_runs_and_reloads(tmp_path):
    from prunekit.models import build

    model = build("digits_cnn").eval()
    x = torch.randn(1, 1, 8, 8)
    analysis = prunekit.analyze(model, x)
    widths = {"conv1": 10, "conv2": 19}
    config = tas_width_config(analysis, widths, model, x, model_spec={"registry": "digits_cnn"})
    assert config.kept["conv1"] == 10 and config.kept["conv3"] == 64 and config.provenance["method"] == "tas"
    small, plan = build_searched(config, analysis, build("digits_cnn").eval(), x, seed=0)
    assert small.conv1.out_channels == 10 and small.conv2.out_channels == 19
    assert small(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    prunekit.save(small, plan, tmp_path / "m")
    again = prunekit.load(tmp_path / "m")
    xb = torch.randn(2, 1, 8, 8)
    assert torch.allclose(again(xb), small(xb))


def test_step_cost_loss_and_temperature_schedule():
    from prunekit.widths.tas import step_cost_loss, tau_at

    e = torch.tensor(60.0, requires_grad=True)
    assert step_cost_loss(e, 55.0, 50.0, 5.0).item() == pytest.approx(math.log(60))  # above R: push down
    assert step_cost_loss(e, 40.0, 50.0, 5.0).item() == pytest.approx(-math.log(60))  # below R - t: push up
    assert step_cost_loss(e, 47.0, 50.0, 5.0).item() == 0.0  # inside the band
    assert tau_at(0.0, 5.0, 0.1) == pytest.approx(5.0) and tau_at(1.0, 5.0, 0.1) == pytest.approx(0.1)
    assert tau_at(0.5, 5.0, 0.1) == pytest.approx(2.55)
