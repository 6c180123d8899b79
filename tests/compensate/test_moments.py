"""The moment formulas against Monte Carlo, and the closed form against its own objective."""
import pytest
import torch

from prunekit.compensate.closed_form import Moments, centered, estimated_error, neuron_merging_scales, solve
from prunekit.compensate.moments import relu_cross_moment, relu_mean, relu_second_moment

N = 200_000
CASES = [  # mean1, std1, mean2, std2, rho
    (0.3, 1.2, -0.5, 0.7, 0.6), (-1.0, 0.5, 0.2, 2.0, -0.4), (0.1, 1.0, 0.1, 1.0, 1.0), (0.5, 1.0, -0.3, 0.8, 0.999),
    (2.0, 0.1, -1.0, 1.0, 0.3), (0.4, 0.0, 0.2, 1.0, 0.5), (0.0, 1.0, 0.0, 1.0, -1.0), (-3.0, 1.0, 1.0, 1.0, 0.9),
]


def _pair(m1, s1, m2, s2, r, seed):
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    return m1 + s1 * u, m2 + s2 * (r * u + max(0.0, 1 - r * r) ** 0.5 * v)


@pytest.mark.parametrize("case", CASES)
def test_rectified_moments_match_monte_carlo(case):
    m1, s1, m2, s2, r = case
    x, y = _pair(m1, s1, m2, s2, r, seed=hash(case) % 1000)
    ax, ay = x.clamp_min(0), y.clamp_min(0)
    # tolerance: 4 standard errors of the Monte Carlo mean, plus a small absolute floor
    se = lambda t: float(t.std() / N ** 0.5)  # noqa: E731
    assert abs(float(ax.mean() - relu_mean(m1, s1))) <= 4 * se(ax) + 1e-6
    assert abs(float((ax ** 2).mean() - relu_second_moment(m1, s1))) <= 4 * se(ax ** 2) + 1e-6
    assert abs(float((ax * ay).mean() - relu_cross_moment(m1, s1, m2, s2, r))) <= 4 * se(ax * ay) + 1e-6


def test_cross_moment_limits_are_exact():
    m, s = torch.tensor([0.3, -0.7, 1.5]), torch.tensor([1.0, 0.4, 2.0])
    # rho = 1 with the same variable: the second moment; independent: the product of means
    assert torch.allclose(relu_cross_moment(m, s, m, s, 1.0), relu_second_moment(m, s), rtol=1e-6)
    assert torch.allclose(relu_cross_moment(m, s, m.flip(0), s.flip(0), 0.0),
                          relu_mean(m, s) * relu_mean(m.flip(0), s.flip(0)), rtol=1e-6)


def _moments_from_samples(a, ad):
    """Moments of original channels a [N, C] and damaged kept channels ad [N, K]."""
    n = a.shape[0]
    return Moments(a.mean(0), (a * a).mean(0), a.T @ ad / n, ad.T @ ad / n, ad.mean(0))


def test_closed_form_never_worse_than_nothing_or_neuron_merging():
    g = torch.Generator().manual_seed(0)
    C, n_in = 12, 30
    w = torch.randn(C, n_in, generator=g, dtype=torch.float64)
    w[3] = 0.8 * w[5] + 0.2 * torch.randn(n_in, generator=g, dtype=torch.float64)  # a near-duplicate filter
    beta, gamma = torch.randn(C, generator=g, dtype=torch.float64) * 0.5, torch.rand(C, generator=g,
                                                                                     dtype=torch.float64) + 0.5
    x = torch.randn(20000, n_in, generator=g, dtype=torch.float64)
    y = x @ w.T
    mu, sd = y.mean(0), y.std(0)
    a = (gamma * (y - mu) / sd + beta).clamp_min(0)
    kept = torch.tensor([0, 1, 2, 4, 5, 6, 8, 9, 10])
    m = _moments_from_samples(a, a[:, kept])
    S = solve(m, kept, "single", ridge=0.0)
    naive = torch.zeros_like(S)
    naive[kept, torch.arange(kept.numel())] = 1.0
    nm = neuron_merging_scales(w, gamma, beta, mu, sd, kept)
    full = torch.zeros(C, kept.numel(), dtype=torch.float64)
    assert estimated_error(m, S) <= estimated_error(m, naive) + 1e-12
    assert estimated_error(m, S) <= estimated_error(m, nm) + 1e-12
    assert estimated_error(m, full) > estimated_error(m, naive)  # zero reconstruction of kept channels is worse
    assert S[3, 4] > 0  # channel 3 is rebuilt from its near-duplicate 5 (column 4 of the kept set)
    # "all": the least squares solution, identical to torch.linalg.lstsq on the samples
    S_all = solve(m, kept, "all", ridge=0.0)
    ref = torch.linalg.lstsq(a[:, kept], a).solution.T
    assert torch.allclose(S_all, ref, atol=1e-6)
    assert estimated_error(m, S_all) <= estimated_error(m, S) + 1e-9
    # centred moments: covariances
    c = centered(m)
    assert torch.allclose(c.cross, torch.cov(torch.cat([a, a[:, kept]], 1).T, correction=0)[:C, C:], atol=1e-9)
