"""PDP and gradual magnitude pruning: mask arithmetic, schedules, hardening, stored masks, the channel variant."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.errors import CheckpointError, ConfigError
from prunekit.train.loop import TrainConfig, train
from prunekit.train.pdp import GMPConfig, MaskSet, PDPConfig, PDPSparsifier, finish, make_sparsifier
from prunekit.train.pdp.masks import (cubic, global_layer_ratios, hard_keep, midpoint_threshold, ramp,
                                      relative_temperature, soft_mask)

torch.set_num_threads(1)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))


def data(n=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return TensorDataset(x, (x[:, :4].argmax(1)))


class ResBlockNet(nn.Module):
    """conv -> BN -> two residual blocks (coupled channels) -> pool -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                                nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.b1(h))
        return self.head(h.mean((2, 3)))


def images(n=96):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long() + (x[:, :, :4].mean((1, 2, 3)) > 0.1).long())


# --------------------------------------------------------------------------------------------- mask arithmetic


def test_soft_mask_is_half_at_the_threshold_and_monotonic():
    w = torch.tensor([[0.05, -0.1, 0.2, -0.4, 0.8, 1.6]])
    t = midpoint_threshold(w.abs(), 3)  # prune 3: W_h = 0.2, W_t = 0.4
    assert t.item() == pytest.approx(0.3)
    m = soft_mask(w, t, relative_temperature(w, 0.1))
    assert soft_mask(torch.tensor([[0.3, -0.3]]), t, torch.tensor(0.01)).tolist()[0] == pytest.approx([0.5, 0.5])
    order = w.abs().argsort(dim=-1)[0]
    assert torch.all(m[0, order].diff() > 0)  # increasing in |w|
    assert ((m < 0.5).sum()).item() == 3


def test_relative_temperature_makes_the_mask_scale_free():
    torch.manual_seed(0)
    w = torch.randn(1, 500) * 0.01
    m_small = soft_mask(w, midpoint_threshold(w.abs(), 400), relative_temperature(w, 0.1))
    big = w * 300.0
    m_big = soft_mask(big, midpoint_threshold(big.abs(), 400), relative_temperature(big, 0.1))
    assert torch.allclose(m_small, m_big, atol=1e-5)
    undecided = ((m_small > 0.01) & (m_small < 0.99)).float().mean().item()
    assert 0.0 < undecided < 0.5  # neither hard nor flat


def test_hard_keep_and_global_ratios_are_exact():
    torch.manual_seed(0)
    mags = [torch.rand(100), torch.rand(37) * 3, torch.rand(9) * 0.1]
    ratios = global_layer_ratios(mags, 0.6)
    pruned = sum(round(r * m.numel()) for r, m in zip(ratios, mags))
    assert abs(pruned - round(0.6 * 146)) <= 1
    assert ratios[2] > ratios[0] > ratios[1]  # small weights are pruned harder
    keep = hard_keep(torch.rand(5, 8), 6)
    assert keep.sum(-1).tolist() == [2] * 5


def test_schedules():
    assert ramp(4, 5, 10) == 0.0 and ramp(5, 5, 10) == pytest.approx(0.1) and ramp(100, 5, 10) == 1.0
    assert cubic(0, 0, 10) == 0.0 and cubic(5, 0, 10) == pytest.approx(1 - 0.5 ** 3) and cubic(10, 0, 10) == 1.0
    assert cubic(3, 0, 0) == 1.0  # no ramp: one-shot


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="quote"):
        PDPConfig(pattern=124)  # what YAML 1.1 makes of an unquoted 2:4
    with pytest.raises(ConfigError, match="pattern"):
        PDPConfig(pattern="4:2")
    with pytest.raises(ConfigError, match="temperature"):
        PDPConfig(temperature=0.0)
    assert PDPConfig(pattern="2:4").final_sparsity == 0.5


# --------------------------------------------------------------------------------------------- training + hardening


def test_pdp_pruned_weights_still_get_gradients():
    model = mlp()
    pdp = PDPSparsifier(PDPConfig(sparsity=0.8, warmup_epochs=0, ramp_epochs=0))
    pdp.prepare(model, steps_per_epoch=1)
    loss = model(torch.randn(8, 16)).pow(2).sum()
    loss.backward()
    original = model[0].parametrizations.weight.original
    mask = model[0].parametrizations.weight[0].mask(original.detach())
    below = mask < 0.5
    assert below.float().mean().item() == pytest.approx(pdp.ratios[0], abs=1 / original.numel())
    assert (original.grad[below] != 0).float().mean() > 0.5  # soft, not stopped


@pytest.mark.parametrize("method", ["pdp", "gmp"])
def test_unstructured_training_hardens_to_the_exact_target_and_replays(tmp_path, method):
    model = mlp()
    cfg = PDPConfig(sparsity=0.75, warmup_epochs=1, ramp_epochs=2)
    sp = make_sparsifier(method, cfg)
    train(model, data(), TrainConfig(epochs=4, lr=0.05, batch_size=32, progress=False), hooks=[sp])
    masks = sp.harden(model)
    for t, r in zip(sp.targets, sp.ratios):
        pruned = int((~masks.masks[t.name]).sum())
        assert abs(pruned - r * t.numel) <= 1  # within one weight per layer
    assert masks.sparsity() == pytest.approx(0.75, abs=2 / 1400)
    train(model, data(), TrainConfig(epochs=1, lr=0.01, batch_size=32, progress=False))  # frozen masks
    finish(model)
    assert masks.verify(model)["passed"]
    masks.save(tmp_path)
    again = MaskSet.load(tmp_path)
    fresh = mlp(seed=5)
    again.apply(fresh)
    for name, keep in masks.masks.items():
        assert torch.equal(again.masks[name], keep)
        w = fresh.get_submodule(name.rsplit(".", 1)[0]).weight
        assert bool((w[~keep] == 0).all()) and bool((w[keep] != 0).all())
    if method == "pdp":
        summary = sp.summary()
        assert summary["final_soft_sparsity"] == pytest.approx(0.75, abs=0.01)
        assert sp.history and 0 <= summary["final_undecided"] <= 1


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_nm_masks_hold_their_pattern_exactly_after_save_and_load(tmp_path, pattern):
    model = mlp()
    sp = make_sparsifier("pdp", PDPConfig(pattern=pattern, warmup_epochs=0, ramp_epochs=1))
    train(model, data(), TrainConfig(epochs=2, lr=0.05, batch_size=64, progress=False), hooks=[sp])
    masks = sp.harden(model, freeze=False)
    assert set(masks.entries) == {"0.weight", "2.weight", "4.weight"}  # 16, 32, 24 inputs: every pattern fits
    n, m = map(int, pattern.split(":"))
    masks.save(tmp_path)
    loaded = MaskSet.load(tmp_path)
    report = loaded.verify(model)
    assert report["passed"] and report["nm_entries"] == len(loaded.entries) and report["nm_violations"] == 0
    assert loaded.sparsity() == pytest.approx(1 - n / m)
    with torch.no_grad():  # a weight that breaks the pattern is caught
        w = model[0].weight
        w[~loaded.masks["0.weight"]] = 1.0
    assert not loaded.verify(model)["passed"]


def test_nm_skips_layers_whose_input_dim_does_not_split():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    sp = make_sparsifier("gmp", GMPConfig(pattern="2:4", ramp_epochs=0))
    sp.prepare(model, 1)
    assert [t.name for t in sp.targets] == ["2.weight"] and "0.weight" in sp.skipped


def test_corrupt_mask_files_are_refused(tmp_path):
    model = mlp()
    sp = make_sparsifier("oneshot", GMPConfig(sparsity=0.5))
    sp.prepare(model, 1)
    masks = sp.harden(model, freeze=False)
    masks.save(tmp_path)
    index = (tmp_path / "masks.json").read_text().replace('"kept": ', '"kept": 1')
    (tmp_path / "masks.json").write_text(index)
    with pytest.raises(CheckpointError, match="corrupted"):
        MaskSet.load(tmp_path)
    with pytest.raises(ConfigError, match="shape"):
        masks.apply(nn.Sequential(nn.Linear(16, 33)))


@pytest.mark.parametrize("method", ["pdp", "gmp"])
def test_channel_variant_removes_channels_physically(tmp_path, method):
    import prunekit

    model = ResBlockNet()
    x = images()[:4][0]
    sp = make_sparsifier(method, PDPConfig(pattern="channel", sparsity=0.5, warmup_epochs=0, ramp_epochs=1), inputs=x)
    train(model, images(), TrainConfig(epochs=2, lr=0.05, batch_size=32, progress=False), hooks=[sp])
    # the residual stream (stem + b1 output) is one group: one shared mask for stem.0, stem.1, b1.3, b1.4
    shared = [g for g in sp.groups if {m.module for m in g.members} >= {"stem.0", "b1.3"}]
    assert len(shared) == 1
    model.eval()
    before = sum(p.numel() for p in model.parameters())
    pruned, plan = sp.harden(model)
    assert pruned.b1[0].out_channels == 6 and pruned.stem[0].out_channels == 4
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * before
    assert pruned.prunekit_verification.passed  # equal to the masked model on the example inputs
    prunekit.save(pruned, plan, tmp_path)
    again = prunekit.load(tmp_path, model=ResBlockNet())
    assert torch.allclose(again(x), pruned(x), atol=1e-6)


def test_sparse_macs_count_only_kept_weights_and_speed_needs_cuda():
    from prunekit.train.pdp.cost import semi_structured_speed, sparse_macs

    model = mlp()
    sp = make_sparsifier("oneshot", GMPConfig(pattern="2:4"))
    sp.prepare(model, 1)
    masks = sp.harden(model, freeze=False)
    cost = sparse_macs(model, torch.randn(3, 16), masks)
    dense = 3 * (16 * 32 + 32 * 24 + 24 * 4)
    assert cost["dense_macs"] == dense and cost["sparse_macs"] == dense // 2
    vit_like = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).eval()
    sp = make_sparsifier("oneshot", GMPConfig(pattern="unstructured", sparsity=0.5, allocation="uniform"))
    sp.prepare(vit_like, 1)
    masks = sp.harden(vit_like, freeze=False)
    assert set(masks.entries) == {"self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight",
                                  "linear2.weight"}
    cost = sparse_macs(vit_like, torch.randn(1, 5, 16), masks)
    linear_macs = 5 * (16 * 48 + 16 * 16 + 16 * 32 + 32 * 16)  # every projection, once per token
    assert cost["dense_macs"] - cost["sparse_macs"] == linear_macs // 2
    if not torch.cuda.is_available():
        assert semi_structured_speed(masks, vit_like)["available"] is False


def test_loop_shows_the_sparsifier_progress_text_every_step():
    calls = []

    class Spy(PDPSparsifier):
        def progress_text(self):
            calls.append(super().progress_text())
            return calls[-1]

    spy = Spy(PDPConfig(sparsity=0.5, warmup_epochs=0, ramp_epochs=1))
    train(mlp(), data(64), TrainConfig(epochs=2, batch_size=32, progress=False), hooks=[spy])
    assert len(calls) == 4 and calls[-1].startswith("sparsity 50.0% undecided ")


def test_an_interrupted_pdp_run_resumes_to_the_same_weights(tmp_path):
    def run(max_steps=None, resume=False):
        model = mlp()
        sp = make_sparsifier("pdp", PDPConfig(sparsity=0.7, warmup_epochs=1, ramp_epochs=1))
        cfg = TrainConfig(epochs=3, batch_size=32, progress=False, checkpoint_dir=str(tmp_path), checkpoint_every=1,
                          checkpoint_unit="step", resume=resume, max_steps=max_steps)
        train(model, data(128), cfg, hooks=[sp])
        return model, sp

    straight, sp_a = run()
    run(max_steps=6)  # stops inside the ramp (warm-up: steps 0-3)
    resumed, sp_b = run(resume=True)
    assert sp_b.step == sp_a.step == 12 and sp_b.ratios == sp_a.ratios
    for name, p in straight.named_parameters():
        assert torch.equal(p, dict(resumed.named_parameters())[name]), name
