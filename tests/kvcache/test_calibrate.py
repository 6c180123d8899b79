"""One-call calibration: refusal without factors, the recommended press, save/reload with its settings."""
import json

import pytest
import torch

from prunekit.config import from_dict
from prunekit.errors import ConfigError
from prunekit.kvcache import PRESSES, calibrate
from prunekit.kvcache.cskv import DEFAULT_DENSITY, KEY_BLOCK, CSKVPress

from .test_think import continuation_logits, tiny_model

CALIB = torch.randint(1, 256, (3, 96), generator=torch.Generator().manual_seed(7))


def test_press_without_factors_is_refused_with_the_command_that_makes_them():
    model = tiny_model("llama")
    press = CSKVPress()
    assert press.k_density == press.v_density == DEFAULT_DENSITY
    with pytest.raises(ConfigError, match="prunekit kv calibrate"):
        with press(model):
            pass
    with pytest.raises(ConfigError, match="prunekit kv calibrate"):  # built by name, as the CLI does
        with from_dict(PRESSES.get("cskv"), {})(model):
            pass
    with pytest.raises(ConfigError, match="init"):
        CSKVPress(init="random")
    with CSKVPress(init="svd")(model):  # the plain SVD only when asked for
        pass


def test_calibrate_saves_factors_with_settings_and_they_reload(tmp_path):
    model = tiny_model("llama")
    press = calibrate(model, data=CALIB, density=0.25, save_to=tmp_path / "f", progress=False, n_seq=3, seq_len=96,
                      window=8)
    assert press.factors is not None and press.init == "calibrated"
    meta = json.loads((tmp_path / "f" / "cskv.json").read_text())
    assert meta["press"] == {"k_density": 0.25, "v_density": 0.25, "window": 8, "sink": 4, "bits": 16,
                             "group_size": 32, "exact_ratio": 0.0, "exact_window": 32,
                             "exact_by": "attention"}
    assert meta["calibration"]["allocation"] == "adaptive" and meta["calibration"]["weighting"] == "attention"
    for row in meta["layers"]:  # the recommended training lowered every layer's error
        assert row["k_after"] < row["k_before"] and row["v_after"] < row["v_before"]
    loaded = CSKVPress.from_pretrained(str(tmp_path / "f"))
    assert loaded.settings() == press.settings()
    ids = torch.randint(1, 256, (1, 60), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    a = continuation_logits(model, press, ids, mask, 48)[1]
    b = continuation_logits(model, loaded, ids, mask, 48)[1]
    torch.testing.assert_close(a, b)
    factors = 4 * sum(t.numel() for layer in press.factors.layers for t in layer.values())
    rotary_table = 2 * KEY_BLOCK * (model.config.hidden_size // model.config.num_attention_heads // 2) * 4
    assert press.fixed_nbytes() == factors + rotary_table  # decoding memoised the block-relative RoPE table


def test_press_given_data_calibrates_itself_and_bad_input_is_named():
    model = tiny_model("llama")
    press = CSKVPress(k_density=0.25, v_density=0.25, window=8, data=CALIB)
    ids = torch.randint(1, 256, (1, 60))
    out = continuation_logits(model, press, ids, torch.ones_like(ids), 48)[1]
    assert press.factors is not None and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="fewer than one window"):
        calibrate(model, data=CALIB[:, :10], progress=False, n_seq=2, seq_len=96)
    with pytest.raises(ConfigError, match="ThinK is training-free"):
        calibrate(model, data=CALIB, method="think")
    with pytest.raises(ConfigError, match="does not exist"):
        calibrate(model, tokenizer=object(), data="/nonexistent/calib.txt")


def test_cli_actions_parse_and_an_uncalibrated_cskv_is_refused():
    from prunekit.cli.kv import build_press
    from prunekit.cli.main import build_parser

    args = build_parser().parse_args(["kv", "calibrate", "--density", "0.5", "--bits", "4", "--out", "dir"])
    assert (args.kv_action, args.density, args.bits, args.out) == ("calibrate", 0.5, 4, "dir")
    args = build_parser().parse_args(["kv", "eval", "--method", "cskv", "--task", "ppl,retrieval"])
    assert args.calibrate is False and args.retrieval_tokens == "2048" and args.prompts == 12
    model = tiny_model("llama")
    press = build_press("cskv", ["k_density=0.25", "v_density=0.25"], model)
    with pytest.raises(ConfigError, match="prunekit kv calibrate --model MODEL --density 0.25"):
        with press(model):
            pass
    assert build_press("full", [], model) is None
