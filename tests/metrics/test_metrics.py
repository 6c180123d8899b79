"""Metrics: parameter and MAC counts against hand formulas, perplexity, latency, memory and accuracy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit.metrics.accuracy import evaluate_accuracy
from prunekit.metrics.latency import eager_latency, onnxruntime_latency
from prunekit.metrics.macs import analytic_resnet_cifar_macs, conv2d_macs, count_macs, linear_macs
from prunekit.metrics.memory import peak_forward_memory
from prunekit.metrics.params import count_parameters
from prunekit.metrics.perplexity import perplexity, windows


# ------------------------------------------------------------------------------------------------ params / MACs

def test_parameter_count_formula_and_tied_weights():
    assert count_parameters(nn.Linear(10, 5)) == 10 * 5 + 5
    conv = nn.Conv2d(3, 8, 3, bias=False)
    assert count_parameters(conv) == 8 * 3 * 3 * 3
    tied = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 50, bias=False))
    tied[1].weight = tied[0].weight
    assert count_parameters(tied) == 50 * 16
    frozen = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    frozen[0].requires_grad_(False)
    assert count_parameters(frozen, trainable_only=True) == 4 * 2 + 2


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_macs_equal_hand_formula(groups):
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=groups)
    x = torch.randn(2, 4, 16, 16)
    expected = 2 * 8 * 8 * 8 * (4 // groups) * 3 * 3
    assert count_macs(conv, x) == expected
    assert 2 * conv2d_macs(4, 8, (3, 3), (8, 8), groups) == expected


def test_linear_macs_equal_hand_formula():
    linear = nn.Linear(20, 7)
    assert count_macs(linear, torch.randn(5, 20)) == 5 * 20 * 7 == linear_macs(20, 7, tokens=5)
    assert count_macs(linear, torch.randn(2, 3, 20)) == linear_macs(20, 7, tokens=6)


class _Block(nn.Module):
    def __init__(self, c_in, c_out, stride, option):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        self.pad = c_out - c_in
        if option == "B" and (stride != 1 or c_in != c_out):
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.down is not None:
            short = self.down(x)
        elif self.pad:
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        else:
            short = x
        return F.relu(out + short)


def _local_cifar_resnet(depth, option):
    """A CIFAR ResNet written here, independently of prunekit.models, to check the analytic count."""
    n, layers, c_in = (depth - 2) // 6, [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(n):
            layers.append(_Block(c_in, width, 2 if stage and not block else 1, option))
            c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("option", ["A", "B"])
def test_analytic_resnet_macs_match_flop_counter(option):
    x = torch.randn(1, 3, 32, 32)
    assert count_macs(_local_cifar_resnet(20, option), x) == analytic_resnet_cifar_macs(20, option)
    name = "cifar_resnet56" if option == "A" else "cifar_resnet56_b"
    try:
        from prunekit.models import build

        model = build(name, pretrained=False).eval()
    except ImportError:
        model = _local_cifar_resnet(56, option)
    measured, analytic = count_macs(model, x), analytic_resnet_cifar_macs(56, option)
    assert abs(measured - analytic) / analytic <= 0.01
    assert analytic_resnet_cifar_macs(56, "A") == 125_485_696  # the usual "125.5 M" figure
    assert count_macs(model, torch.randn(2, 3, 32, 32)) == 2 * measured


# ------------------------------------------------------------------------------------------------ perplexity

class _UniformLM(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab)


class _BigramLM(nn.Module):
    """Puts logit `strength` on the token `next_of[current]` (a deterministic sequence is then almost certain)."""

    def __init__(self, next_of, vocab, strength=30.0):
        super().__init__()
        self.table = nn.Parameter(F.one_hot(next_of, vocab).float() * strength)

    def forward(self, ids):
        return self.table[ids]


def test_uniform_logits_give_vocabulary_size():
    ids = torch.randint(0, 97, (1000,), generator=torch.Generator().manual_seed(0))
    assert perplexity(_UniformLM(97), ids, context=128) == pytest.approx(97, rel=1e-3)
    assert perplexity(_UniformLM(97), ids, context=128, stride=32) == pytest.approx(97, rel=1e-3)


def test_perplexity_of_a_predictable_stream_and_window_accounting():
    vocab = 11
    ids = torch.arange(300) % vocab
    next_of = (torch.arange(vocab) + 1) % vocab
    assert perplexity(_BigramLM(next_of, vocab), ids, context=64) < 1.0001
    wrong = perplexity(_BigramLM((torch.arange(vocab) + 2) % vocab, vocab), ids, context=64)
    assert wrong > 1e6
    spans = list(windows(4096, 512, 512))
    assert len(spans) == 8 and sum(end - first for _, end, first in spans) == 4096 - 8
    overlapping = list(windows(4096, 512, 256))
    assert sum(end - first for _, end, first in overlapping) == 4095
    assert all(end - start <= 512 for start, end, _ in overlapping)


def test_perplexity_matches_manual_cross_entropy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(23, 8), nn.Linear(8, 23))
    ids = torch.randint(0, 23, (50,))
    with torch.no_grad():
        logits = model(ids[None])[0]
    manual = math.exp(F.cross_entropy(logits[:-1], ids[1:]).item())
    assert perplexity(model, ids, context=50) == pytest.approx(manual, rel=1e-5)


# ------------------------------------------------------------------------------------------------ latency / memory

class _ThreadProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.seen = set()

    def forward(self, x):
        self.seen.add(torch.get_num_threads())
        return self.conv(x)


def test_eager_latency_is_positive_and_uses_the_thread_setting():
    probe = _ThreadProbe().eval()
    before = torch.get_num_threads()
    result = eager_latency(probe, torch.randn(1, 3, 32, 32), warmup=1, repeats=5, threads=1)
    assert result.median_ms > 0 and result.min_ms <= result.median_ms <= result.max_ms
    assert result.repeats == 5 and result.threads == 1 and probe.seen == {1}
    assert torch.get_num_threads() == before


def test_onnxruntime_latency_runs_the_exported_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    result = onnxruntime_latency(model, torch.randn(1, 3, 16, 16), warmup=1, repeats=5, threads=1)
    assert result.backend.startswith("onnxruntime") and result.median_ms > 0 and result.threads == 1


def test_peak_memory_covers_activations_and_scales_with_batch():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).eval()
    small = peak_forward_memory(model, torch.randn(1, 3, 32, 32))
    large = peak_forward_memory(model, torch.randn(8, 3, 32, 32))
    activation = 64 * 32 * 32 * 4  # one [1, 64, 32, 32] float32 tensor
    assert small.peak_bytes >= activation
    if small.method == "profiler":
        assert small.peak_bytes <= 6 * activation
        assert 6 * small.peak_bytes <= large.peak_bytes <= 10 * small.peak_bytes


# ------------------------------------------------------------------------------------------------ accuracy

class _NearestCentroid(nn.Module):
    """argmin ||x - c_k||^2 as logits -||x - c_k||^2, from class means of the digits training images."""

    def __init__(self, centroids):
        super().__init__()
        self.centroids = nn.Parameter(centroids)

    def forward(self, x):
        return -torch.cdist(x.flatten(1), self.centroids) ** 2


def test_accuracy_of_a_nearest_centroid_digits_classifier():
    from prunekit.data.digits import digits

    train, test = digits("train"), digits("test")
    flat = train.images.flatten(1)
    centroids = torch.stack([flat[train.labels == k].mean(0) for k in range(10)])
    model = _NearestCentroid(centroids).train()
    acc = evaluate_accuracy(model, test, batch_size=64, progress=False)
    dists = ((test.images.flatten(1)[:, None] - centroids[None]) ** 2).sum(-1)
    manual = (dists.argmin(1) == test.labels).float().mean().item()
    assert round(acc * len(test)) == round(manual * len(test)) and acc > 0.85
    assert model.training  # mode restored
    first = evaluate_accuracy(model, test, limit=100, progress=False)
    assert first == pytest.approx((dists[:100].argmin(1) == test.labels[:100]).float().mean().item())


def test_pretrained_resnet20_accuracy_on_raw_subset():
    try:
        from prunekit.models import build, info

        model = build("cifar_resnet20", pretrained=True)
    except ImportError as exc:
        pytest.skip(f"cifar_resnet20 unavailable: {exc}")
    from prunekit.data.cifar10 import cifar10_raw

    meta = info("cifar_resnet20")
    acc = evaluate_accuracy(model, cifar10_raw(normalize=(meta.mean, meta.std)), limit=512, progress=False)
    assert acc >= 0.88
    assert count_parameters(model) == 269_722
    assert np.isclose(acc * 512, round(acc * 512))
