"""The BN output deviation with eps, the data-free channel selection (smallest reconstruction error) and the guard
that falls back to a baseline where the closed form's estimated gain is small."""
import itertools

import pytest
import torch
from torch import nn

import prunekit
from prunekit.compensate.select import channel_covariance, consumer_metric, greedy_prune
from prunekit.compensate.sources import bn_output_std
from prunekit.compensate.udfc import UDFCConfig, compress
from prunekit.errors import ConfigError
from prunekit.models import example_inputs

from .conftest import logit_error


def test_bn_output_std_includes_eps():
    """A channel whose running variance is comparable to eps: the BN output spread is |gamma| sqrt(v / (v + eps)),
    checked on samples drawn with exactly the running statistics."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3, eps=1e-3).eval()
    var = torch.tensor([1.0, 1e-3, 1e-5])
    with torch.no_grad():
        bn.running_var.copy_(var)
        bn.running_mean.copy_(torch.tensor([0.5, -0.2, 0.0]))
        bn.weight.copy_(torch.tensor([2.0, -1.5, 0.7]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    y = bn.running_mean + var.sqrt() * torch.randn(200_000, 3, dtype=torch.float64).float()
    with torch.no_grad():
        z = bn(y).double()
    expected = bn_output_std(bn)
    assert torch.allclose(z.std(0), expected, rtol=0.01)
    assert torch.allclose(z.mean(0), bn.bias.detach().double(), atol=0.01)
    assert float(expected[2]) < 0.11 * 0.7  # |gamma| alone would be 10x too large here


def _exact_error(cov, metric, pruned):
    """tr(M_PP Sigma_P|K), Sigma_P|K from the covariance directly (no precision matrix)."""
    C = cov.shape[0]
    kept = [i for i in range(C) if i not in pruned]
    P = torch.tensor(pruned)
    K = torch.tensor(kept)
    s_pk = cov[P][:, K]
    cond = cov[P][:, P] - s_pk @ torch.linalg.solve(cov[K][:, K], s_pk.T)
    return float((metric[P][:, P] * cond).sum())


def test_greedy_selection_error_and_optimality_on_small_layer():
    torch.manual_seed(1)
    C = 7
    basis = torch.randn(C, 4, dtype=torch.float64)
    cov = basis @ basis.T + 0.05 * torch.eye(C, dtype=torch.float64)  # strongly correlated channels
    cols = torch.randn(C, 5, 3, dtype=torch.float64)
    metric = consumer_metric([cols])
    assert torch.allclose(metric, torch.einsum("ios,jos->ij", cols, cols))
    pruned, rel = greedy_prune(cov, metric, 3, ridge=0.0)
    exact = _exact_error(cov, metric, pruned)
    assert rel == pytest.approx(exact / float((metric * cov).sum()), rel=1e-6)
    # greedy is within 10% of the best subset of size 3, and far better than the average subset
    all_err = [_exact_error(cov, metric, list(p)) for p in itertools.combinations(range(C), 3)]
    assert exact <= 1.10 * min(all_err)
    assert exact < sum(all_err) / len(all_err)
    with pytest.raises(ValueError, match="compensate.select"):
        greedy_prune(cov, metric, C)


def test_channel_covariance_prefers_duplicated_filters():
    """Two channels with the same filter and BN: the greedy choice prunes one of the copies (the kept copy rebuilds
    it exactly), even though its l1 norm is the largest."""
    torch.manual_seed(2)
    w = torch.randn(6, 12, dtype=torch.float64)
    w[5] = 3.0 * w[0]
    beta = torch.zeros(6, dtype=torch.float64)
    gamma = torch.ones(6, dtype=torch.float64)
    cov = channel_covariance(w, beta, gamma)
    assert torch.allclose(cov, cov.T)
    assert float(torch.linalg.eigvalsh(cov).min()) > -1e-8
    pruned, rel = greedy_prune(cov, torch.eye(6, dtype=torch.float64), 1, ridge=1e-6)
    assert pruned[0] in (0, 5) and rel < 1e-3


def test_ridge_towards_identity_leaves_undamaged_channels_alone():
    """With nothing pruned and nothing quantised, the plain ridge scales every channel by v / (v + alpha); the
    identity prior gives S = I exactly, and with a pruned channel it still reconstructs it."""
    from prunekit.compensate.closed_form import centered, identity_prior, solve
    from prunekit.compensate.sources import bn_moments

    torch.manual_seed(3)
    w = torch.randn(5, 9, dtype=torch.float64)
    beta = torch.tensor([0.5, -1.0, 0.0, 0.2, -2.0], dtype=torch.float64)
    gamma = torch.tensor([1.0, 0.1, 2.0, 0.5, 0.05], dtype=torch.float64)
    kept = torch.arange(5)
    m = centered(bn_moments(w, w, beta, gamma, kept, "all"))
    plain = solve(m, kept, "all", ridge=0.01)
    assert float((torch.diagonal(plain) - 1).abs().max()) > 1e-3
    ident = solve(m, kept, "all", ridge=0.01, prior=identity_prior(5, kept))
    assert torch.allclose(ident, torch.eye(5, dtype=torch.float64), atol=1e-9)
    kept = torch.tensor([0, 1, 2, 4])
    w2 = w.clone()
    w2[3] = 2.0 * w[0]
    beta2, gamma2 = beta.clone(), gamma.clone()
    beta2[3], gamma2[3] = 2.0 * beta[0], 2.0 * gamma[0]  # z_3 = 2 z_0, so ReLU(z_3) = 2 ReLU(z_0)
    m = centered(bn_moments(w2, w2, beta2, gamma2, kept, "all"))
    S = solve(m, kept, "all", ridge=1e-4, prior=identity_prior(5, kept))
    assert float(S[3, 0]) == pytest.approx(2.0, rel=0.02)  # the copy is rebuilt from its original


def test_reconstruction_selection_keeps_counts_and_lowers_error(resnet20, raw_images):
    x = example_inputs("cifar_resnet20")
    plan = prunekit.plan(resnet20, x, ratio=0.3, criterion="l1")
    errors = {}
    for selection in ("plan", "reconstruction"):
        result = compress(resnet20, x, UDFCConfig(bits=6, prune_uncompensable=False, selection=selection), plan=plan)
        errors[selection] = logit_error(result.model, resnet20, raw_images)
        if selection == "reconstruction":
            compensable = set(result.report["compensable_groups"])
            chosen = result.plan.removed
            assert result.plan.provenance["udfc_selection"] == "reconstruction"
            assert set(result.report["selection_estimated_error"]) == {g for g in compensable if plan.removed.get(g)}
            assert any(chosen[g] != plan.removed[g] for g in compensable if plan.removed.get(g))
            assert all(len(chosen[g]) == len(plan.removed[g]) for g in compensable)
    assert errors["reconstruction"] < errors["plan"]


def test_guard_falls_back_and_reports(resnet20):
    x = example_inputs("cifar_resnet20")
    plan = prunekit.plan(resnet20, x, ratio=0.3, criterion="l1")
    base = compress(resnet20, x, UDFCConfig(bits=6, prune_uncompensable=False, guard=0.0), plan=plan)
    rows = base.report["layers"]
    assert rows and all(r["choice"] == "udfc" for r in rows)  # under its own moments the closed form never loses
    assert all(r["guard_gain"] >= -1e-6 for r in rows)
    assert all(r["guard_errors"]["udfc"] <= min(r["guard_errors"].values()) + 1e-9 for r in rows)
    gains = sorted(r["guard_gain"] for r in rows)
    cut = gains[len(gains) // 2]
    guarded = compress(resnet20, x, UDFCConfig(bits=6, prune_uncompensable=False, guard=cut), plan=plan)
    for r in guarded.report["layers"]:
        assert r["choice"] == ("udfc" if r["guard_gain"] >= cut else min(
            (k for k in r["guard_errors"] if k != "udfc"), key=r["guard_errors"].get))
    assert any(r["choice"] != "udfc" for r in guarded.report["layers"])
    with pytest.raises(ConfigError, match="guard"):
        UDFCConfig(guard=1.5)
    with pytest.raises(ConfigError, match="selection"):
        UDFCConfig(selection="l2")
    nm = compress(resnet20, x, UDFCConfig(compensation="neuron_merging", prune_uncompensable=False), plan=plan)
    assert all(nm.plan.removed[g] == plan.removed[g] for g in nm.plan.removed)  # only the closed form re-selects
