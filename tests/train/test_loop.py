"""The reference loop on real data (scikit-learn digits): learning, exact resume, checkpoint safety, config checks."""
import json
import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.errors import CheckpointError, ConfigError
from prunekit.train import checkpoint as ckpt
from prunekit.train.loop import TrainConfig, lr_at, train

torch.set_num_threads(1)  # tiny models: one thread avoids contention on the shared 2-core machine


def digits(n_train=768, n_test=256):
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[-n_test:], y[-n_test:])


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 4 * 4, 10),
    )


def accuracy(model, ds):
    model.eval()
    with torch.no_grad():
        x, y = ds.tensors
        return float((model(x).argmax(1) == y).float().mean())


def test_loss_decreases_and_model_learns_digits():
    train_ds, test_ds = digits()
    model = small_cnn()
    before = accuracy(model, test_ds)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, device="cpu", log_every=4, progress=False)
    result = train(model, train_ds, cfg, eval_fn=lambda m: {"acc": accuracy(m, test_ds)})
    losses = [m["train_loss"] for m in result.epoch_metrics]
    assert result.steps == 3 * math.ceil(768 / 32) and result.epochs == 3
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.5 * losses[0]
    assert result.epoch_metrics[-1]["acc"] > 0.85 > before + 0.5
    assert result.losses[0][0] == 4 and len(result.losses) == result.steps // 4


class Crash(Exception):
    pass


class CrashAt:
    """A hook that kills the run after the optimizer's `at`-th backward (steps are 0-based)."""

    def __init__(self, at):
        self.at = at

    def after_backward(self, model, step, epoch):
        if step == self.at:
            raise Crash(f"simulated crash at step {step}")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, optimizer):
    train_ds, _ = digits(n_train=320)
    base = dict(epochs=2, batch_size=32, lr=0.02 if optimizer == "sgd" else 3e-3, optimizer=optimizer,
                weight_decay=1e-4, warmup_steps=3, device="cpu", progress=False, checkpoint_unit="step",
                checkpoint_every=4, log_every=1)
    ref_model = small_cnn(seed=1)
    ref = train(ref_model, train_ds, TrainConfig(**base, checkpoint_dir=str(tmp_path / "ref")))

    crashed = small_cnn(seed=1)
    run_dir = str(tmp_path / "run")
    with pytest.raises(Crash):
        train(crashed, train_ds, TrainConfig(**base, checkpoint_dir=run_dir), hooks=[CrashAt(13)])
    # steps 0..12 completed, checkpoints after 4, 8 and 12 steps: the run resumes from 12 and redoes 13 onwards
    assert ckpt.latest_checkpoint(run_dir).name == "step-00000012"
    resumed_model = small_cnn(seed=99)  # a different init: everything must come from the checkpoint
    res = train(resumed_model, train_ds, TrainConfig(**base, checkpoint_dir=run_dir, resume=True))
    assert res.resumed_from.endswith("step-00000012") and res.steps == ref.steps == 20
    ref_state, res_state = ref_model.state_dict(), resumed_model.state_dict()
    for k in ref_state:
        assert torch.allclose(ref_state[k].float(), res_state[k].float(), atol=1e-6, rtol=0), k
    assert [m["train_loss"] for m in res.epoch_metrics] == pytest.approx(
        [m["train_loss"] for m in ref.epoch_metrics], abs=1e-6)
    assert [s for s, _ in res.losses] == [s for s, _ in ref.losses] == list(range(1, 21))
    assert [v for _, v in res.losses] == pytest.approx([v for _, v in ref.losses], abs=1e-6)
    # resuming a finished run is a no-op
    again = train(resumed_model, train_ds, TrainConfig(**base, checkpoint_dir=run_dir, resume=True))
    assert again.steps == 20 and torch.equal(resumed_model[0].weight, ref_model[0].weight.to(resumed_model[0].weight))


def test_checkpoint_files_are_safe_and_corruption_is_detected(tmp_path):
    train_ds, _ = digits(n_train=128)
    model = small_cnn()
    cfg = TrainConfig(epochs=2, batch_size=32, device="cpu", progress=False, checkpoint_dir=str(tmp_path),
                      checkpoint_every=1, checkpoint_unit="epoch", keep_checkpoints=1)
    train(model, train_ds, cfg)
    folders = ckpt.list_checkpoints(tmp_path)
    assert [f.name for f in folders] == ["step-00000008"]  # only the newest is kept
    files = sorted(p.name for p in folders[0].iterdir())
    assert files == ["model.safetensors", "state.json", "state.safetensors"]
    meta = json.loads((folders[0] / "state.json").read_text())
    assert meta["step"] == 8 and meta["progress"]["epoch"] == 2 and meta["progress"]["config"]["batch_size"] == 32
    # a hidden temporary folder (an interrupted write) is never taken for a checkpoint
    (tmp_path / ".step-00000099.abc").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000008"

    state_file = folders[0] / "model.safetensors"
    data = state_file.read_bytes()
    state_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        train(small_cnn(), train_ds, TrainConfig(**{**cfg.__dict__, "resume": True}))
    state_file.write_bytes(data)
    (folders[0] / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json"):
        ckpt.load_checkpoint(folders[0], small_cnn())
    # an architecture that does not match is named
    (folders[0] / "state.json").write_text(json.dumps(meta))
    wider = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1))
    with pytest.raises(CheckpointError, match="missing keys|unexpected keys|shape"):
        ckpt.load_checkpoint(folders[0], wider)


def test_max_steps_stops_early_and_schedule_spans_the_planned_run():
    train_ds, _ = digits(n_train=256)
    cfg = TrainConfig(epochs=4, batch_size=32, device="cpu", progress=False, max_steps=5, warmup_steps=2,
                      lr=0.1, min_lr_ratio=0.1)
    result = train(small_cnn(), train_ds, cfg)
    assert result.steps == 5 and result.epochs == 0 and math.isfinite(result.final_loss)
    assert lr_at(cfg, 0, 32) == pytest.approx(0.05) and lr_at(cfg, 1, 32) == pytest.approx(0.1)
    assert lr_at(cfg, 2, 32) == pytest.approx(0.1)
    assert lr_at(cfg, 17, 32) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5), rel=1e-6)  # half way through the cosine
    assert lr_at(cfg, 32, 32) == pytest.approx(0.01)


@pytest.mark.parametrize("bad", [dict(optimizer="lbfgs"), dict(epochs=0), dict(lr=-1.0), dict(schedule="step"),
                                 dict(checkpoint_unit="hour"), dict(resume=True), dict(max_steps=0)])
def test_config_validation(bad):
    with pytest.raises(ConfigError, match="TrainConfig"):
        TrainConfig(**bad)
