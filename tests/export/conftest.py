"""Pruned zoo models shared by the export tests (each pruned once per session, on tiny inputs)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Dict

import pytest
import torch

import prunekit
from prunekit.models import build, example_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _zoo_models import _perturb_norms  # noqa: E402

HF = ["hf_tiny_llama", "hf_tiny_qwen2", "hf_tiny_mistral", "hf_tiny_gpt2", "hf_tiny_bert", "hf_tiny_vit",
      "hf_tiny_resnet", "hf_tiny_convnext", "hf_tiny_mobilenetv2", "hf_tiny_swin"]
# one model per family the engine and the exporters treat differently (BN CNN, residual CNN, ViT, grouped-query LLM,
# GPT-2 fused attention, BERT encoder, Hugging Face CNN): the tests' matrix; benchmarks/export_roundtrip.py runs the
# whole zoo
FAMILIES = ["digits_cnn", "cifar_resnet20", "cifar_vit", "hf_tiny_llama", "hf_tiny_gpt2", "hf_tiny_bert",
            "hf_tiny_resnet"]


def zoo_inputs(name: str, seed: int = 0):
    """Tiny inputs: batch 2 (yolov8n: one 64x64 image), 8 tokens for language models."""
    if name == "yolov8n":
        return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    return example_inputs(name, batch=2, seq_len=8, seed=seed)


class PrunedZoo:
    """name -> (pruned model, plan), pruned at 50% by the global allocator (non-uniform widths), norms perturbed so
    that a mis-mapped channel or a wrong fold would show."""

    def __init__(self):
        self.cache: Dict[str, tuple] = {}

    def __call__(self, name: str):
        if name not in self.cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build(name, pretrained=False).eval()
            _perturb_norms(model)
            x = zoo_inputs(name)
            plan = prunekit.plan(model, x, ratio=0.5, allocator="global")
            self.cache[name] = (prunekit.apply(model, plan, x), plan)
        return self.cache[name]


@pytest.fixture(scope="session")
def pruned_zoo():
    torch.set_num_threads(1)
    return PrunedZoo()
