"""Zoo entries for benchmarks/engine_zoo.py: the reference models, Hugging Face models and the four
cases on which Torch-Pruning is known to fail, built with their example inputs.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo_op_cases import OP_CASES, build_op_case  # noqa: E402


# ------------------------------------------------------------------ the four Torch-Pruning failure cases, as models

def conv_bn(c1: int, c2: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


class C2fCase(nn.Module):
    """YOLOv8 C2f in small: conv -> chunk(2) -> bottleneck with residual on one half -> cat -> conv -> classifier.

    Shapes: [B, 3, 32, 32] -> [B, 10].
    """

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem, self.cv1 = conv_bn(3, c, 3, 2), conv_bn(c, 2 * c)
        self.m1, self.m2 = conv_bn(c, c, 3), conv_bn(c, c, 3)
        self.cv2, self.head = conv_bn(3 * c, 2 * c), nn.Linear(2 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(self.stem(x)).chunk(2, 1)
        m = b + self.m2(self.m1(b))
        return self.head(self.cv2(torch.cat([a, b, m], 1)).mean((2, 3)))


class ShuffleCase(nn.Module):
    """A channel shuffle (view -> transpose -> reshape, 4 groups) between two convs. [B, 3, 32, 32] -> [B, 10]."""

    def __init__(self, c: int = 32, groups: int = 4):
        super().__init__()
        self.groups = groups
        self.stem, self.conv_a, self.conv_b = conv_bn(3, 16, 3, 2), conv_bn(16, c), conv_bn(c, c, 3)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_a(self.stem(x))
        b, c, h, w = y.shape
        y = y.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(self.conv_b(y).mean((2, 3)))


class RMSNormCase(nn.Module):
    """``nn.RMSNorm`` between two linears: [B, T, 32] -> fc1 (64) -> RMSNorm -> fc2 -> GELU -> fc3 -> [B, T, 10]."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2, self.fc3 = nn.Linear(32, 64), nn.RMSNorm(64, eps=1e-6), nn.Linear(64, 64), \
            nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.nn.functional.gelu(self.fc2(self.norm(self.fc1(x)))))


class MaskCase(nn.Module):
    """A [B, C, H, W] feature map times a [B, 1, H, W] mask from a 1-channel conv + sigmoid.

    Shapes: [B, 3, 32, 32] -> [B, 10].
    """

    def __init__(self, c: int = 32):
        super().__init__()
        self.stem, self.feat, self.gate = conv_bn(3, 16, 3, 2), conv_bn(16, c, 3), nn.Conv2d(c, 1, 1)
        self.conv_c, self.head = conv_bn(c, c, 3), nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.feat(self.stem(x))
        return self.head(self.conv_c(f * torch.sigmoid(self.gate(f))).mean((2, 3)))


CASES = {"case_c2f_chunk": C2fCase, "case_channel_shuffle": ShuffleCase, "case_rmsnorm": RMSNormCase,
         "case_mask_broadcast": MaskCase}


# --------------------------------------------------------------------------------------------------------- the zoo

@dataclass
class Entry:
    """One zoo model: `family` selects the Torch-Pruning settings; `quick` says whether --quick runs it."""

    name: str
    family: str
    quick: bool = True


def zoo() -> List[Entry]:
    cnn = ["cifar_resnet20", "cifar_resnet56", "cifar_resnet56_b", "cifar_vgg16", "cifar_mobilenetv2",
           "cifar_shufflenetv2"]
    out = [Entry(n, "cnn") for n in cnn] + [Entry("cifar_vit", "cifar_vit"), Entry("yolov8n", "yolo")]
    out += [Entry(f"hf_tiny_{a}", "hf_llm") for a in ("llama", "qwen2", "mistral")]
    out += [Entry("hf_tiny_gpt2", "hf_gpt2"), Entry("hf_tiny_bert", "hf_bert"), Entry("hf_tiny_vit", "hf_vit")]
    out += [Entry(f"hf_tiny_{a}", "hf_cnn") for a in ("resnet", "convnext", "mobilenetv2")]
    out += [Entry("hf_tiny_swin", "hf_swin"), Entry("smollm2_135m", "hf_llm", quick=False)]
    out += [Entry(n, family) for n, (family, _, _) in HF_EXTRA.items()]
    return out + [Entry(n, "cnn") for n in CASES] + [Entry(n, "cnn") for n in OP_CASES]


# Hugging Face families whose attention or experts the engine reads through their operations (fused 3-D expert
# parameters, q_lin/k_lin/v_lin projections, fused qkv / gate-up projections sliced at offsets or reshaped with head
# counts read from attributes and configs), from small configs.
HF_EXTRA = {
    "hf_tiny_mixtral": ("hf_llm", "MixtralForCausalLM", dict(
        hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
        num_local_experts=4, num_experts_per_tok=2)),
    "hf_tiny_qwen2_moe": ("hf_llm", "Qwen2MoeForCausalLM", dict(
        hidden_size=64, intermediate_size=96, moe_intermediate_size=48, shared_expert_intermediate_size=80,
        num_experts=4, num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)),
    "hf_tiny_olmoe": ("hf_llm", "OlmoeForCausalLM", dict(
        hidden_size=64, intermediate_size=48, num_experts=4, num_experts_per_tok=2, num_attention_heads=4,
        num_key_value_heads=4, num_hidden_layers=2)),
    "hf_tiny_distilbert": ("hf_generic", "DistilBertForMaskedLM", dict(dim=64, n_heads=4, hidden_dim=96,
                                                                        n_layers=2)),
    "hf_tiny_phi3": ("hf_llm", "Phi3ForCausalLM", dict(
        hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
        pad_token_id=0)),
    "hf_tiny_gpt_neox": ("hf_generic", "GPTNeoXForCausalLM", dict(
        hidden_size=64, intermediate_size=96, num_attention_heads=4, num_hidden_layers=2)),
    # fused qkv reshaped with ``view(b, t, self.num_heads, 3, self.head_dim)``: head counts read from attributes
    "hf_tiny_falcon": ("hf_generic", "FalconForCausalLM", dict(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=2, multi_query=False,
        new_decoder_architecture=False)),
    # grouped-query variant: ``view(b, t, -1, self.num_heads // self.num_kv_heads + 2, self.head_dim)``
    "hf_tiny_falcon_gqa": ("hf_generic", "FalconForCausalLM", dict(
        hidden_size=64, num_attention_heads=4, num_kv_heads=2, num_hidden_layers=2, new_decoder_architecture=True)),
    # ``view(b, -1, self.n_heads, self.key_value_proj_dim)`` and a relative position bias shared by every layer
    "hf_tiny_t5_encoder": ("hf_generic", "T5EncoderModel", dict(d_model=64, d_kv=16, num_heads=4, num_layers=2,
                                                                 d_ff=96)),
}


def build_hf_extra(name: str, seed: int = 0) -> nn.Module:
    """A randomly initialised Hugging Face model of a zoo family, from its small config (offline)."""
    import transformers

    _, cls_name, kwargs = HF_EXTRA[name]
    model_cls = getattr(transformers, cls_name)
    config = model_cls.config_class(vocab_size=100, max_position_embeddings=64, **kwargs)
    torch.manual_seed(seed)
    return model_cls(config)


def _perturb_norms(model: nn.Module, seed: int = 0) -> None:
    """Give normalisation layers non-trivial affine parameters and statistics (random-init ones are 1 and 0, which
    would hide a mis-sliced bias or a mis-mapped channel)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if "Norm" not in type(m).__name__:
                continue
            for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                if t is None or not t.is_floating_point() or t.dim() != 1:
                    continue
                r = torch.rand(t.shape, generator=gen)
                t.copy_(0.5 + r if name in ("weight", "running_var") else 0.2 * (r - 0.5))


def build_entry(entry: Entry) -> Tuple[nn.Module, Any, Any, str]:
    """(model in eval mode, example inputs, check inputs from another seed and batch, weights kind)."""
    from prunekit.models import build, example_inputs

    if entry.name in CASES:
        torch.manual_seed(0)
        model = CASES[entry.name]().eval()
        _perturb_norms(model)
        shape = (8, 32) if entry.name == "case_rmsnorm" else (3, 32, 32)
        gen = torch.Generator().manual_seed(0)
        return model, torch.randn(2, *shape, generator=gen), torch.randn(3, *shape, generator=gen), "random"
    if entry.name in OP_CASES:
        model, x, x_check = build_op_case(entry.name)
        _perturb_norms(model)
        if entry.name == "op_branch_two_examples":  # prunekit gets both branches; the check runs the other one
            return model, x, x_check[1], "random"
        return model, x, x_check, "random"
    if entry.name in HF_EXTRA:
        model = build_hf_extra(entry.name).eval()
        _perturb_norms(model)
        gen = torch.Generator().manual_seed(0)
        return model, torch.randint(1, 100, (2, 16), generator=gen), torch.randint(1, 100, (3, 11), generator=gen), \
            "random"
    weights = "pretrained"
    try:
        model = build(entry.name, pretrained=True)
        if entry.name.startswith(("hf_tiny", "yolov8n", "cifar_vgg", "cifar_mobilenet", "cifar_shuffle")):
            weights = "random"  # these have no pretrained weights (build returns a random network)
    except Exception:  # noqa: BLE001 - no weights here: prune the random network
        model, weights = build(entry.name, pretrained=False), "random"
    model.eval()
    if weights == "random":
        _perturb_norms(model)
    if entry.name == "yolov8n":
        gen = torch.Generator().manual_seed(0)
        return model, torch.randn(1, 3, 256, 256, generator=gen), torch.randn(1, 3, 256, 256, generator=gen), weights
    seq = 16 if entry.name != "smollm2_135m" else 24
    return (model, example_inputs(entry.name, batch=2, seq_len=seq, seed=0),
            example_inputs(entry.name, batch=3, seq_len=seq - 5, seed=1), weights)


# ---------------------------------------------------------------- masked references, independent of either tool
