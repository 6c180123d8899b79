"""Operation rules, each on a plain-torch model: pruned at 50%, verified on example and held-out inputs, smaller."""
import sys
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.metrics.params import count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _zoo_op_cases import OP_CASES, build_op_case  # noqa: E402


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_operation_case_prunes_and_verifies(name):
    model, x, x_check = build_op_case(name)
    if name == "op_branch_two_examples":
        x, x_check = prunekit.Examples(list(x)), prunekit.Examples(list(x_check))
    an = prunekit.analyze(model, x)
    assert not an.unknown_ops and not an.untraced, (an.unknown_ops, an.untraced)
    plan = prunekit.plan(model, x, ratio=0.5, analysis=an)
    pruned = prunekit.apply(model, plan, x, held_out=x_check)
    report = pruned.prunekit_verification
    assert report.passed and max(report.errors) < 1e-4 and report.inputs_checked >= 2, report
    assert count_parameters(pruned) < 0.8 * count_parameters(model)


def test_attention_heads_are_units_over_q_k_v_and_gqa_keeps_its_ratio():
    model, x, _ = build_op_case("op_sdpa_gqa_attention")
    an = prunekit.analyze(model, x)
    heads = an.group("q_lin")
    assert heads.size == 2 and heads.prunable  # one unit per key/value head with its 2 query heads
    plan = prunekit.plan(model, x, ratio=0.5, analysis=an)
    pruned = prunekit.apply(model, plan, x)
    assert pruned.q_lin.out_features == 16 and pruned.k_lin.out_features == pruned.v_lin.out_features == 8


def test_experts_ffn_pruned_jointly_and_router_untouched():
    model, x, _ = build_op_case("op_experts_3d_params")
    an = prunekit.analyze(model, x)
    router = [g for g in an.groups if any(m.module == "router" and m.dim == 0 for m in g.members)]
    assert router and not any(g.prunable for g in router)
    ffn = an.group("gate_up")
    assert ffn.size == 24 and ffn.members[0].index_map.shape == (24, 2)  # gate row i goes with up row i
    pruned = prunekit.apply(model, prunekit.plan(model, x, ratio=0.5, analysis=an), x)
    assert pruned.gate_up.shape == (4, 24, 16) and pruned.down.shape == (4, 12, 16)
    assert pruned.router.weight.shape == (4, 16)


def test_split_with_literal_sizes_is_refused_and_einsum_pairs_operands():
    class Literal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 48, 1), torch.nn.Conv2d(16, 8, 1)

        def forward(self, x):
            q, k, v = self.a(x).split(16, dim=1)  # a constant of the code: cannot follow a pruned width
            return self.b(q * k + v)

    an = prunekit.analyze(Literal().eval(), torch.randn(1, 3, 4, 4))
    assert not an.group("a").prunable and "fixed sizes" in an.group("a").reasons[0]


@pytest.mark.parametrize("name", ["hf_tiny_mixtral", "hf_tiny_distilbert", "hf_tiny_gpt_neox"])
def test_hugging_face_families_read_through_their_operations(name):
    """Experts as 3-D parameters (Mixtral), q_lin/k_lin/v_lin attention (DistilBERT), a fused per-head qkv with
    partial rotary (GPT-NeoX): pruned, verified on a held-out input, and the pruned model runs."""
    from _zoo_models import build_hf_extra

    model = build_hf_extra(name).eval()
    gen = torch.Generator().manual_seed(0)
    ids, held_out = torch.randint(1, 100, (2, 12), generator=gen), torch.randint(1, 100, (1, 7), generator=gen)
    an = prunekit.analyze(model, ids)
    plan = prunekit.plan(model, ids, ratio=0.5, analysis=an)
    pruned = prunekit.apply(model, plan, ids, held_out=held_out)
    assert pruned.prunekit_verification.passed and max(pruned.prunekit_verification.errors) < 1e-4
    assert count_parameters(pruned) < 0.7 * count_parameters(model)
    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", None) or cfg.n_heads
    removed_heads = [g for g in an.groups if g.prunable and g.size == kv_heads and plan.removed.get(g.id)
                     and any("q" in m.module.rsplit(".", 1)[-1] for m in g.members)]
    assert len(removed_heads) == cfg.num_hidden_layers  # one head group per layer, pruned
