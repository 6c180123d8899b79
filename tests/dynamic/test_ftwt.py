"""FTWT dynamic channel masks: labels, sites from the engine's groups, the gathered path, MACs, training, save/load."""
from __future__ import annotations

import pytest
import torch

from prunekit.data import load
from prunekit.dynamic import DynamicConfig, attach, find_sites, mass_labels, uniform_labels
from prunekit.dynamic.evaluate import evaluate_dynamic
from prunekit.dynamic.gathered import build_gathered
from prunekit.dynamic.io import load_dynamic, save_dynamic
from prunekit.dynamic.train import DynamicTrainConfig, FTWTHook, train_dynamic, warm_up_predictors
from prunekit.errors import ConfigError
from prunekit.metrics.macs import count_macs
from prunekit.models import build


def _randomise_predictors(dyn, seed=0):
    """Predictors that switch filters on and off per input (an untrained one keeps everything)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dyn.predictors.values():
            p.fc.weight.copy_(torch.randn(p.fc.weight.shape, generator=gen) * 3)
            p.fc.bias.copy_(torch.randn(p.fc.bias.shape, generator=gen) * 0.5)


def test_mass_labels_keep_the_fewest_filters_covering_the_mass():
    strength = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]])
    assert mass_labels(strength, 0.8).tolist() == [[1, 1, 0, 0, 0]]
    assert mass_labels(strength, 0.81).tolist() == [[1, 1, 1, 0, 0]]
    assert mass_labels(strength, 1.0).tolist() == [[1, 1, 1, 1, 0]]  # only the dead filter goes
    shuffled = strength[:, [3, 0, 4, 2, 1]]
    assert mass_labels(shuffled, 0.8).tolist() == [[0, 1, 0, 0, 1]]
    assert uniform_labels(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 0.5).tolist() == [[1, 0, 1, 0]]
    with pytest.raises(ConfigError, match="threshold"):
        mass_labels(strength, 0.0)


def test_sites_follow_the_engine_groups_and_residual_ties_stay_dense():
    model = build("cifar_resnet20", pretrained=False).eval()
    sites, dense = find_sites(model, torch.randn(1, 3, 32, 32), gate_tied=False)
    assert [s.conv for s in sites] == [f"layer{i}.{j}.conv1" for i in (1, 2, 3) for j in range(3)]
    first = sites[0]
    assert first.norm == "layer1.0.bn1" and list(first.consumers) == ["layer1.0.conv2"] and first.channels == 16
    assert "residual add" in dense["conv1"] and "10 producers" in dense["conv1"]
    assert "constant content" in dense["layer2.0.conv2"]  # the engine's own refusal (option-A zero padding)


def test_residual_branch_outputs_and_the_stem_are_gated_as_in_ftwt():
    model = build("cifar_resnet20", pretrained=False).eval()
    sites, _ = find_sites(model, torch.randn(1, 3, 32, 32))
    gates = [s for s in sites if s.tied]
    assert [s.conv for s in gates] == ["conv1"] + [f"layer{i}.{j}.conv2" for i in (1, 2, 3) for j in range(3)]
    assert all(s.norm == s.conv.replace("conv", "bn") and not s.consumers for s in gates)
    assert [s.conv for s in sites if not s.tied] == [f"layer{i}.{j}.conv1" for i in (1, 2, 3) for j in range(3)]
    # a gate's masked filters save their own MACs only: the residual sum they feed stays dense for its readers
    dyn = attach(model, torch.randn(1, 3, 32, 32)).eval()
    masks = {s.conv: torch.ones(1, s.channels) for s in dyn.sites}
    masks["layer1.0.conv2"][0, :4] = 0
    per_filter = 16 * 32 * 32 * 9  # MACs of one layer1.0.conv2 filter (16 input channels, 32x32, 3x3)
    assert float(dyn.macs_per_input(masks)[0]) == dyn.dense_macs() - 4 * per_filter


@pytest.mark.parametrize("name", ["cifar_resnet20", "digits_cnn"])
def test_gathered_path_equals_masked_dense_model(name):
    torch.manual_seed(0)
    model = build(name, pretrained=False).eval()
    shape = (1, 8, 8) if name == "digits_cnn" else (3, 32, 32)
    # softmax on (ResNet): a narrow input is scattered to full width for the predictor; off (digits): the predictor's
    # weight rows are gathered instead
    dyn = attach(model, torch.randn(1, *shape), DynamicConfig(threshold=0.8, softmax=name != "digits_cnn")).eval()
    _randomise_predictors(dyn)
    for narrow in (True, False):
        gathered = build_gathered(dyn, torch.randn(1, *shape), narrow=narrow)
        assert bool(gathered.narrow_sites) == narrow
        for seed in range(2):
            x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                want, got = dyn(x), gathered(x)
            kept = torch.cat([m.flatten() for m in dyn.last_masks.values()])
            assert 0 < kept.mean() < 1  # some filters masked, some kept
            assert float((got - want).abs().max() / want.abs().max()) <= 1e-5
            # the gathered path runs exactly the backbone MACs the dynamic count promises, plus the predictors' (which
            # skip their own masked inputs on a narrow input without softmax)
            macs, backbone = count_macs(gathered, x), int(dyn.macs_per_input()[0])
            assert backbone < macs <= backbone + dyn.predictor_macs()
            assert macs == backbone + dyn.predictor_macs() or narrow
    with pytest.raises(ConfigError, match="one input at a time"):
        gathered(torch.randn(2, *shape))


def test_dense_macs_match_the_counter_and_masks_lower_them():
    model = build("cifar_resnet20", pretrained=False).eval()
    x = torch.randn(4, 3, 32, 32)
    dyn = attach(model, x[:1]).eval()
    assert dyn.dense_macs() == count_macs(model, x[:1])
    with torch.no_grad():
        dyn(x)
    assert torch.all(dyn.macs_per_input() == dyn.dense_macs())  # untrained predictors keep every filter
    _randomise_predictors(dyn)
    with torch.no_grad():
        dyn(x)
    macs = dyn.macs_per_input()
    assert macs.shape == (4,) and torch.all(macs < dyn.dense_macs()) and macs.std() > 0


def _digits(n):
    return torch.utils.data.Subset(load("digits", "train"), range(n))


def test_decoupled_mask_loss_trains_only_predictors_and_joint_reaches_the_backbone():
    digits = load("digits", "train")
    x = torch.stack([digits[i][0] for i in range(8)])
    for mode, reaches in (("decoupled", False), ("joint", True)):
        dyn = attach(build("digits_cnn", pretrained=False), x[:1], DynamicConfig(mode=mode)).train()
        dyn(x)
        dyn.mask_loss.backward()
        assert all(p.grad is not None for p in dyn.predictors.parameters())
        backbone_grads = [p.grad for n, p in dyn.backbone.named_parameters() if n.startswith("conv1")]
        assert any(g is not None and g.abs().sum() > 0 for g in backbone_grads) == reaches


def test_warm_up_fits_predictors_and_cooldown_freezes_them():
    torch.manual_seed(0)
    data = _digits(256)
    dyn = attach(build("digits_cnn", pretrained=False), data[0][0][None], DynamicConfig(threshold=0.8, softmax=False))
    before = evaluate_dynamic(dyn, data).summary()["agreement"]
    frozen = {k: v.clone() for k, v in dyn.backbone.state_dict().items()}
    warm_up_predictors(dyn, data, steps=30, lr=1.0, batch_size=64)
    assert all(torch.equal(frozen[k], v) for k, v in dyn.backbone.state_dict().items())  # backbone untouched
    assert evaluate_dynamic(dyn, data).summary()["agreement"] > before + 0.05
    cfg = DynamicTrainConfig(epochs=1, warmup_steps=0, cooldown=0.5, batch_size=32, max_steps=8, predictor_lr=0.5)
    snapshots = []

    class Spy(FTWTHook):  # records the predictors after every step
        def after_backward(self, model, step, epoch):
            super().after_backward(model, step, epoch)
            self.optimizer.zero_grad()
            snapshots.append((model.supervise, [p.detach().clone() for p in model.predictors.parameters()]))

    from prunekit.train.loop import TrainConfig, train

    train(dyn, data, TrainConfig(epochs=1, batch_size=32, max_steps=8, device="cpu", progress=False),
          hooks=[Spy(cfg)])
    supervised = [s for s, _ in snapshots]
    assert supervised == [True, True, True, False, False, False, False, False]  # off after 4 of 8 steps
    after = [p for s, p in snapshots if not s]
    assert all(torch.equal(a, b) for a, b in zip(after[0], after[-1]))  # predictors frozen after the cool-down
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0][1], snapshots[3][1]))  # but trained before


def test_save_and_reload_without_pickle(tmp_path):
    torch.manual_seed(0)
    data = _digits(64)
    dyn = attach(build("digits_cnn", pretrained=False), data[0][0][None], DynamicConfig(threshold=0.9, mode="joint"))
    train_dynamic(dyn, data, DynamicTrainConfig(epochs=1, warmup_steps=2, batch_size=32, max_steps=2),
                  progress=False)
    _randomise_predictors(dyn, seed=3)
    save_dynamic(dyn, tmp_path, {"registry": "digits_cnn"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dynamic.json", "model.safetensors"]
    again = load_dynamic(tmp_path)
    x = torch.stack([data[i][0] for i in range(8)])
    with torch.no_grad():
        want, got = dyn.eval()(x), again(x)
    assert torch.equal(want, got)
    assert all(torch.equal(dyn.last_masks[k], again.last_masks[k]) for k in dyn.last_masks)
    assert again.config == dyn.config and [s.to_dict() for s in again.sites] == [s.to_dict() for s in dyn.sites]
    (tmp_path / "dynamic.json").write_text("{not json")
    with pytest.raises(Exception, match="cannot read"):
        load_dynamic(tmp_path)


def test_ftwt_recipe_runs_resumes_and_saves(tmp_path):
    from prunekit.methods import RECIPES

    cls = RECIPES.get("ftwt")
    overrides = [f"out_dir={tmp_path}", "task.model=digits_cnn", "task.dataset=digits", "task.augment=null",
                 "task.train_subset=96", "task.test_limit=64", "task.batch_size=32", "train.warmup_steps=2",
                 "train.max_steps=2", "train.batch_size=32", "eval.latency_images=3", "masks.threshold=0.8"]
    result = cls.from_file(None, overrides).run()
    assert result["status"] == "complete" and 0 <= result["accuracy"] <= 1
    assert 0 < result["macs_keep"] <= 1 and result["stages"]["measure"]["gathered_ms"] > 0
    again = cls.from_file(None, overrides).run()  # resumes: both stages finished
    assert again["stages"]["train"]["seconds"] == result["stages"]["train"]["seconds"]
    dyn = load_dynamic(result["model_dir"])
    assert [s.conv for s in dyn.sites] == ["conv1", "conv2", "conv3"]
    assert dyn.sites[-1].other_readers == ["fc"]  # the head reads conv3's masked channels as zeros
