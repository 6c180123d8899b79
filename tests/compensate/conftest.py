"""Shared fixtures of the compensation tests: a pretrained CIFAR ResNet-20 and real CIFAR-10 images."""
import pytest
import torch

from prunekit.models import build, info


@pytest.fixture(scope="module")
def resnet20():
    return build("cifar_resnet20").eval()


@pytest.fixture(scope="module")
def raw_images():
    from prunekit.data import load

    meta = info("cifar_resnet20")
    data = load("cifar10_raw", normalize=(meta.mean, meta.std), limit=128)
    return torch.stack([data[i][0] for i in range(len(data))])


def logit_error(model, reference, x):
    """Mean squared logit error of `model` relative to the energy of `reference`'s logits on `x`."""
    with torch.no_grad():
        y0 = reference(x)
        return float((model(x) - y0).pow(2).mean() / y0.pow(2).mean())
