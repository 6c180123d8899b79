"""Code the trace did not run: untraced modules refuse the groups that may reach them; several example inputs
trace every branch, and verification runs on each of them (and on held-out inputs)."""
import sys
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _zoo_op_cases import BranchCase as Branchy  # noqa: E402  (`big` runs only on inputs of 16 pixels or more)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)


def test_one_example_refuses_groups_reaching_the_module_it_did_not_run():
    model = Branchy().eval()
    small_x, _ = _inputs()
    an = prunekit.analyze(model, small_x)
    assert set(an.untraced) == {"big.0", "big.1"}
    stem = an.group("stem")
    assert not stem.prunable
    assert "big.0" in stem.reasons[0] and "did not run" in stem.reasons[0]
    assert stem in an.refused("actionable")
    # a plan made with both branches cannot be applied with an example that runs only one of them
    both = prunekit.plan(model, prunekit.Examples(_inputs()), ratio=0.5)
    assert both.removed["stem"]
    with pytest.raises(ConfigError, match="cannot be pruned.*did not run"):
        prunekit.apply(model, both, small_x, analysis=an)


def test_two_examples_prune_both_branches_and_verify_on_both():
    torch.manual_seed(0)
    model = Branchy().eval()
    small_x, big_x = _inputs()
    examples = prunekit.Examples([small_x, big_x])
    an = prunekit.analyze(model, examples)
    assert an.untraced == {} and an.examples == 2
    assert an.group("stem").prunable
    plan = prunekit.plan(model, examples, ratio=0.5, analysis=an)
    held_out = prunekit.Examples([torch.randn(1, 3, 8, 8), torch.randn(1, 3, 20, 20)])
    pruned = prunekit.apply(model, plan, examples, held_out=held_out)
    report = pruned.prunekit_verification
    assert report.inputs_checked == 4 and report.passed and max(report.errors) < 1e-4
    assert pruned.stem.out_channels == 8 and pruned.big[0].in_channels == 8 and pruned.small.in_channels == 8
    # the branches' outputs meet at head: one group, pruned in both
    assert pruned.big[0].out_channels == pruned.small.out_channels == pruned.head.in_channels == 8
    for x in (small_x, big_x):
        assert pruned(x).shape == model(x).shape


def test_ignoring_an_unused_module_gives_its_groups_back():
    model = Branchy().eval()
    small_x, _ = _inputs()
    an = prunekit.analyze(model, small_x, ignore=["big"])  # a container pattern: covers big.0 and big.1
    assert an.group("stem").prunable
    pruned = prunekit.apply(model, prunekit.plan(model, small_x, ratio=0.5, analysis=an), small_x)
    assert pruned.stem.out_channels == 8 and pruned.prunekit_verification.passed
