"""Every reference model of the zoo prunes at 50% and passes verification (or its refusals say why)."""
import warnings

import pytest
import torch

import prunekit
from prunekit.metrics.params import count_parameters
from prunekit.models import build, example_inputs

CNN = ["cifar_resnet20", "cifar_resnet56_b", "cifar_vgg16", "cifar_mobilenetv2", "cifar_shufflenetv2", "cifar_vit",
       "digits_cnn"]
HF = ["hf_tiny_llama", "hf_tiny_qwen2", "hf_tiny_mistral", "hf_tiny_gpt2", "hf_tiny_bert", "hf_tiny_vit",
      "hf_tiny_resnet", "hf_tiny_convnext", "hf_tiny_mobilenetv2", "hf_tiny_swin"]


def _prune(name, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(name, pretrained=False).eval()
    an = prunekit.analyze(model, x)
    plan = prunekit.plan(model, x, ratio=0.5, analysis=an)
    pruned = prunekit.apply(model, plan, x, analysis=an)  # raises if verification fails
    return model, pruned, an, plan


@pytest.mark.parametrize("name", CNN + HF)
def test_zoo_model_prunes_and_verifies(name):
    x = example_inputs(name, batch=2)
    model, pruned, an, plan = _prune(name, x)
    report = pruned.prunekit_verification
    assert report.passed and report.relative_error < 1e-4, (name, report)
    assert count_parameters(pruned) < count_parameters(model)
    for g in an.refused():
        assert g.reasons, f"{name}: group {g.id} refused without a reason"


def test_yolov8_detector_prunes_and_verifies():
    x = torch.randn(1, 3, 128, 128)
    model, pruned, an, plan = _prune("yolov8n", x)
    assert pruned.prunekit_verification.relative_error < 1e-4
    assert count_parameters(pruned) < 0.5 * count_parameters(model)
    # the detection head's output channels (boxes, classes) are never pruned
    out = pruned.eval()(x)
    assert out.shape == model.eval()(x).shape
