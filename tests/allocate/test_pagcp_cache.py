"""PAGCP's prefix cache: replaying the outputs of the modules in front of a unit gives the full forward's losses."""
import math

import torch

from prunekit import planning
from prunekit.allocate.pagcp_sweep import PrefixCache, SoftMask, TaskOracle, sweep
from prunekit.graph.types import Budget
from prunekit.models import build
from prunekit.models.cifar_multihead import class_loss, coarse_loss, two_task_batch

torch.set_num_threads(1)


def _setup():
    torch.manual_seed(0)
    model = build("cifar_resnet20_multihead", pretrained=False).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [two_task_batch(torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen))
               for _ in range(2)]
    analysis = planning.analyse(model, batches[0][0][:2])
    config = planning.PlanConfig(allocator={"name": "pagcp", "progress": False}, budget=Budget(ratio=0.999))
    groups = [g for g in planning.eligibility(analysis, config) if g.id not in ("linear", "coarse")]
    oracle = TaskOracle({"class": class_loss, "vehicle": coarse_loss}, batches)
    return model, groups, oracle


def test_replayed_prefix_gives_the_full_forward_losses_for_every_unit():
    model, groups, oracle = _setup()
    by_id = {g.id: g for g in groups}
    for group in (g for g in groups if g.id in ("layer1.1.conv1", "layer2.0.conv1", "layer2.0.conv2",
                                                "layer3.2.conv1")):
        mask = SoftMask(model, group)
        prefix = PrefixCache.build(model, group, oracle)
        for n in (group.size // 3, group.size - 1):
            mask.apply(torch.arange(n))
            full, replayed = oracle.losses(model), oracle.losses(model, prefix)
            for task in full:
                assert math.isclose(full[task], replayed[task], rel_tol=1e-5, abs_tol=1e-6), (group.id, n, task)
        mask.apply(torch.arange(0))
        # the model is restored after replaying: no forward of it is left patched
        assert all("forward" not in vars(m) for m in model.modules())
    # a unit deep in the trunk replays the whole front: stem, stage 1 and 2
    names = PrefixCache.build(model, by_id["layer3.1.conv1"], oracle).names
    assert {"conv1", "bn1", "layer1", "layer2", "layer3.0"} <= set(names)
    assert not any(n.startswith("layer3.1") for n in names)
    # the stem's unit has nothing in front of it
    assert PrefixCache.build(model, by_id["conv1"], oracle) is None


def test_sweep_with_and_without_the_cache_decides_the_same():
    model, groups, oracle = _setup()
    grid = [0.2, 0.6]
    caps = {g.id: g.size - 1 for g in groups}

    def score(m, g):
        return torch.arange(g.size, dtype=torch.float32)

    runs = [sweep(model, groups, caps, oracle, None, score, grid, 0.1, 3.0, progress=False, cache_inputs=flag)
            for flag in (True, False)]
    cached, plain = runs
    assert [(r.group, r.removed, r.stopped_by) for r in cached.records] == \
        [(r.group, r.removed, r.stopped_by) for r in plain.records]
    assert any(r.replayed for r in cached.records) and not any(r.replayed for r in plain.records)
    for task in cached.final_losses:
        assert math.isclose(cached.final_losses[task], plain.final_losses[task], rel_tol=1e-5)
