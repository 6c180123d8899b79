"""BatchNorm re-estimation: exact statistics for the current weights, nothing else touched."""
import copy

import torch
from torch import nn

from prunekit.train.bn_recalibrate import recalibrate_batchnorm


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, momentum=0.1), nn.ReLU(),
                         nn.Dropout(0.5), nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4))


def test_statistics_become_the_exact_average_over_the_images():
    model = net()
    x = torch.randn(64, 3, 8, 8) * 2 + 1
    with torch.no_grad():  # stale statistics, as a short training run would leave them
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(0.01)
    before = copy.deepcopy(model.state_dict())
    assert recalibrate_batchnorm(model, x, batch_size=16) == 2
    with torch.no_grad():
        h = model[0](x)
    # four equal chunks of 16: the cumulative average of the per-chunk means / unbiased variances
    means = torch.stack([c.mean(dim=(0, 2, 3)) for c in h.split(16)])
    vars_ = torch.stack([c.transpose(0, 1).reshape(6, -1).var(dim=1, unbiased=True) for c in h.split(16)])
    assert torch.allclose(model[1].running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(model[1].running_var, vars_.mean(0), atol=1e-4)
    # the second BN saw each chunk normalised by its own batch statistics (as in training) and dropout off
    with torch.no_grad():
        bn = model[1]
        chunks = [model[4](model[2](nn.functional.batch_norm(c, None, None, bn.weight, bn.bias, training=True)))
                  for c in h.split(16)]
    assert torch.allclose(model[5].running_mean, torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks]).mean(0),
                          atol=1e-5)
    # weights unchanged, momentum restored, everything left in eval mode
    for key, value in model.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, before[key]), key
    assert model[1].momentum == 0.1 and not any(m.training for m in model.modules())


def test_recalibration_repairs_stale_statistics_after_training():
    torch.manual_seed(1)
    model = net()
    x = torch.randn(128, 3, 8, 8)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):  # large steps: the running averages trail the weights
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        reference = copy.deepcopy(model).train()(x)  # batch statistics of the final weights
        stale_error = (model(x) - reference).abs().max()
        recalibrate_batchnorm(model, x, batch_size=128)
        fresh_error = (model(x) - reference).abs().max()
    assert fresh_error < 1e-3 < stale_error


def test_model_without_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    state = copy.deepcopy(model.state_dict())
    assert recalibrate_batchnorm(model, [torch.randn(3, 4)]) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
