"""Distillation: each loss against hand-computed values, feature taps' clean-up, adapters, the Distiller in the loop."""
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.errors import ConfigError
from prunekit.registry import registry
from prunekit.train.distill.attention import AttentionConfig, AttentionTransfer
from prunekit.train.distill.cwd import ChannelWiseDistillation, CWDConfig
from prunekit.train.distill.logit_kd import LogitKD, LogitKDConfig
from prunekit.train.distill.taps import Distiller, DistillTerm, FeatureTaps, make_adapter
from prunekit.train.loop import LoopInfo, TrainConfig, train

torch.set_num_threads(1)


def _softmax(v):
    e = [math.exp(x - max(v)) for x in v]
    return [x / sum(e) for x in e]


# ----------------------------------------------------------------------------------------------- losses


def test_logit_kd_matches_hand_computation():
    torch.manual_seed(0)
    s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([1, 4, 0])
    T, alpha = 2.0, 0.7
    kl = 0.0
    for b in range(3):
        ps = _softmax([float(v) / T for v in s[b]])
        pt = _softmax([float(v) / T for v in t[b]])
        kl += sum(pt[k] * (math.log(pt[k]) - math.log(ps[k])) for k in range(5))
    kd = T * T * kl / 3
    ce = sum(-math.log(_softmax([float(v) for v in s[b]])[int(y[b])]) for b in range(3)) / 3
    assert float(LogitKD(LogitKDConfig(temperature=T))(s, t)) == pytest.approx(kd, rel=1e-5)
    full = LogitKD(LogitKDConfig(temperature=T, alpha=alpha, include_ce=True))(s, t, y)
    assert float(full) == pytest.approx((1 - alpha) * ce + alpha * kd, rel=1e-5)
    assert float(LogitKD()(t, t)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="targets"):
        LogitKD(include_ce=True)(s, t)


def _attention_np(f):
    b, c, h, w = f.shape
    out = np.zeros((b, h * w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                out[i, y * w + x] = sum(f[i, k, y, x] ** 2 for k in range(c)) / c
        out[i] /= math.sqrt(sum(v * v for v in out[i]))
    return out


def test_attention_transfer_matches_hand_computation_and_names_bad_layers():
    rng = np.random.default_rng(0)
    s1, t1 = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 4, 4))  # channel counts may differ
    s2, t2 = rng.normal(size=(2, 2, 2, 3)), rng.normal(size=(2, 4, 2, 3))
    betas = (10.0, 2.0)
    expected = sum(beta * np.mean((_attention_np(t) - _attention_np(s)) ** 2)
                   for beta, s, t in zip(betas, (s1, s2), (t1, t2)))
    loss = AttentionTransfer(AttentionConfig(betas=betas))
    got = loss([torch.tensor(s1), torch.tensor(s2)], [torch.tensor(t1), torch.tensor(t2)])
    assert float(got) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="neck.p4"):
        loss([torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)], [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)],
             names=["backbone.s1", "neck.p4"])


def test_cwd_matches_hand_computation():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 3, 2, 3)), rng.normal(size=(2, 3, 2, 3))
    tau, weight = 2.0, 0.5
    total = 0.0
    for n in range(2):
        for c in range(3):
            ps = _softmax([v / tau for v in s[n, c].ravel()])
            pt = _softmax([v / tau for v in t[n, c].ravel()])
            total += sum(pt[i] * (math.log(pt[i]) - math.log(ps[i])) for i in range(6))
    expected = weight * total * tau ** 2 / (2 * 3)
    got = ChannelWiseDistillation(CWDConfig(tau=tau, loss_weight=weight))(torch.tensor(s), torch.tensor(t))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="p3.*adapter"):
        ChannelWiseDistillation()([torch.randn(2, 4, 3, 3)], [torch.randn(2, 8, 3, 3)], names=["p3"])


def test_losses_are_registered_by_name():
    reg = registry("distill_loss")
    assert reg.get("logit_kd") is LogitKD and reg.get("attention") is AttentionTransfer
    assert reg.get("cwd") is ChannelWiseDistillation


# ----------------------------------------------------------------------------------------------- taps, adapters


class Block(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


def net(width, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(Block(1, width), Block(width, width), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(width * 4, 10))


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_feature_taps_collect_by_pattern_and_always_remove_hooks():
    model = net(4)
    x = torch.randn(2, 1, 8, 8)
    with FeatureTaps(model, ["*.conv", "4"]) as taps:
        assert _hook_count(model) == 3
        out = model(x)
        assert taps.names == ["0.conv", "1.conv", "4"]
        assert taps.features["1.conv"].shape == (2, 4, 8, 8) and torch.equal(taps.features["4"], out)
    assert _hook_count(model) == 0 and taps.features == {}
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureTaps(model, ["*.act"]):
            assert _hook_count(model) == 2
            model(x)
            raise RuntimeError("boom")
    assert _hook_count(model) == 0
    with pytest.raises(ConfigError, match="'head.\\*'"):
        with FeatureTaps(model, ["0.conv", "head.*"]):
            pass
    assert _hook_count(model) == 0


def test_adapters_align_widths():
    conv = make_adapter(torch.randn(2, 4, 5, 5), torch.randn(2, 8, 5, 5))
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (8, 4, 1, 1)
    lin = make_adapter(torch.randn(2, 7, 6), torch.randn(2, 7, 12))
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (12, 6)
    assert make_adapter(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)) is None


# ----------------------------------------------------------------------------------------------- Distiller


def digits():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return TensorDataset(x[:512], y[:512]), TensorDataset(x[-300:], y[-300:])


def _kl_to_teacher(student, teacher, ds, T=4.0):
    x, _ = ds.tensors
    with torch.no_grad():
        return float(LogitKD(temperature=T)(student.eval()(x), teacher.eval()(x)))


@pytest.fixture(scope="module")
def teacher():
    train_ds, _ = digits()
    model = net(16, seed=5)
    train(model, train_ds, TrainConfig(epochs=3, batch_size=32, lr=0.05, device="cpu", progress=False))
    return model.eval()


def test_distiller_trains_adapters_and_pulls_student_to_teacher(teacher, tmp_path):
    train_ds, test_ds = digits()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, device="cpu", progress=False,
                      checkpoint_dir=str(tmp_path), checkpoint_every=1)
    plain = net(6, seed=1)
    train(plain, train_ds, TrainConfig(**{**cfg.__dict__, "checkpoint_dir": None}))

    student = net(6, seed=1)
    terms = [DistillTerm("cwd", {"tau": 2.0}, student=("*.act",), weight=2.0),
             DistillTerm("logit_kd", {"temperature": 4.0}, weight=1.0, schedule="cosine_decay",
                         schedule_args={"final": 0.5})]
    distiller = Distiller(teacher, terms)
    result = train(student, train_ds, cfg, hooks=[distiller])
    assert sorted(distiller.adapters.keys()) == ["0__act", "1__act"]
    assert distiller.adapters["1__act"].weight.shape == (16, 6, 1, 1)
    # the adapters were created before the optimizer and trained with the student
    fresh = Distiller(teacher, terms)
    torch.manual_seed(cfg.seed)  # the loop seeds before on_train_start: same initial adapters as the run had
    fresh.on_train_start(net(6, seed=1), LoopInfo(1, 1, 1, 0, 1, torch.device("cpu"), train_ds.tensors[0][:2]))
    assert (fresh.adapters["1__act"].weight - distiller.adapters["1__act"].weight).abs().max() > 1e-3
    assert _hook_count(student) == 0 and _hook_count(teacher) == 0
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())  # frozen
    assert result.epoch_metrics[-1]["train_loss"] < result.epoch_metrics[0]["train_loss"]
    # the distilled student imitates the teacher better than the same student trained on labels only
    kl_distilled, kl_plain = _kl_to_teacher(student, teacher, test_ds), _kl_to_teacher(plain, teacher, test_ds)
    print(f"KL(teacher || student) at T=4 on 300 held-out digits: distilled {kl_distilled:.4f}, plain {kl_plain:.4f}")
    assert kl_distilled < 0.8 * kl_plain

    # adapters travel with checkpoints: resuming restores them into a new Distiller
    again = Distiller(teacher, terms)
    train(net(6, seed=9), train_ds, TrainConfig(**{**cfg.__dict__, "resume": True}), hooks=[again])
    assert torch.equal(again.adapters["0__act"].weight, distiller.adapters["0__act"].weight)


def test_distiller_weight_schedule_and_misuse(teacher):
    train_ds, _ = digits()
    x, y = train_ds.tensors[0][:8], train_ds.tensors[1][:8]
    student = net(6)
    term = DistillTerm("attention", {"betas": [100.0]}, student=("1.act",), weight=3.0, schedule="cosine_decay",
                       schedule_args={"final": 0.3})
    distiller = Distiller(teacher, [term])
    distiller.on_train_start(student, LoopInfo(1, 10, 10, 0, 1, torch.device("cpu"), x))
    with distiller.context(student):
        out = student(x)
        first = float(distiller.extra_loss(student, (x, y), out, 0).detach())
        out = student(x)
        mid = float(distiller.extra_loss(student, (x, y), out, 5).detach())
        out = student(x)
        last = float(distiller.extra_loss(student, (x, y), out, 10).detach())
    assert first > 0 and mid == pytest.approx(first * 1.65 / 3.0, rel=1e-5)
    assert last == pytest.approx(first * 0.1, rel=1e-5)
    assert len(distiller.adapters) == 0  # attention needs no equal widths, so no adapter
    with pytest.raises(ConfigError, match="context"):
        distiller.extra_loss(student, (x, y), student(x), 0)
    with pytest.raises(ConfigError, match="pair up"):
        bad = Distiller(teacher, [DistillTerm("cwd", student=("1.act",), teacher=("*.act",))])
        bad.on_train_start(student, LoopInfo(1, 1, 1, 0, 1, torch.device("cpu"), x))
