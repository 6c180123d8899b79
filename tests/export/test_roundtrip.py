"""Every export path of pruned models (non-uniform widths): checkpoint save/load in a fresh process, BatchNorm
folding, Hugging Face save_pretrained / from_pretrained, ONNX + onnxruntime and torch.export.

Pruning, replaying and exporting cost seconds per model on a 2-core CPU, so the tests run one model per family
(`FAMILIES`); the whole zoo (every path, every model) runs in ``python benchmarks/export_roundtrip.py``, whose
targets are no wrong outputs and no refusal beyond the documented one (torch.export of the YOLOv8 head).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from prunekit.export import export_onnx_checked, export_program, fold_batchnorm, load_pretrained, save
from prunekit.export.roundtrip import outputs
from prunekit.export._outputs import relative_error

from .conftest import FAMILIES, HF, zoo_inputs

TOL = 1e-4
# a CNN's ONNX and torch.export run in tests/cli/test_cli_export.py (through the CLI)
EXPORT_FAMILIES = ["cifar_vit", "hf_tiny_llama", "hf_tiny_resnet"]
RELOAD_FAMILIES = ["digits_cnn", "cifar_vit", "hf_tiny_llama", "hf_tiny_gpt2"]


def test_pruned_models_reload_in_a_fresh_process(pruned_zoo, tmp_path):
    from safetensors.torch import save_file

    for name in RELOAD_FAMILIES:
        pruned, plan = pruned_zoo(name)
        save(pruned, plan, tmp_path / name, hf=False)
        check = zoo_inputs(name, seed=1)
        save_file({"x": check, **{f"y{i}": y for i, y in enumerate(outputs(pruned, check))}},
                  str(tmp_path / f"{name}.io.safetensors"))
    script = textwrap.dedent(f"""
        import pickle, sys, torch, prunekit
        from safetensors.torch import load_file
        from prunekit.export.roundtrip import outputs
        def refuse(*a, **k):
            raise AssertionError("pickle used")
        class NoUnpickler(pickle.Unpickler):
            load = refuse
        pickle.load = pickle.loads = refuse  # loading must not unpickle anything
        pickle.Unpickler = NoUnpickler
        torch.set_num_threads(1)
        for name in {RELOAD_FAMILIES!r}:
            model = prunekit.load({str(tmp_path)!r} + "/" + name)  # built from the registry name in plan.json
            io = load_file({str(tmp_path)!r} + f"/{{name}}.io.safetensors")
            got = outputs(model, io["x"])
            for i, y in enumerate(got):
                err = float((y - io[f"y{{i}}"]).abs().max())
                assert err <= 1e-5 * max(1.0, float(io[f"y{{i}}"].abs().max())), (name, i, err)
            print("ok", name)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3600,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **_python_env()})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("ok ") == len(RELOAD_FAMILIES)


def _python_env():
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "PRUNEKIT_DATA", "PRUNEKIT_CACHE",
                                                         "HF_HUB_OFFLINE", "PATH")}


@pytest.mark.parametrize("name", FAMILIES)
def test_batchnorm_folding_keeps_outputs(pruned_zoo, name):
    pruned, _ = pruned_zoo(name)
    x, check = zoo_inputs(name), zoo_inputs(name, seed=1)
    folded = fold_batchnorm(pruned, x)
    bns = lambda m: sum(isinstance(b, torch.nn.modules.batchnorm._BatchNorm) for b in m.modules())  # noqa: E731
    if bns(pruned):
        assert bns(folded) < bns(pruned), f"{name}: no BatchNorm was folded"
    assert relative_error(outputs(pruned, check), outputs(folded, check)) <= TOL
    assert bns(pruned) == sum(isinstance(b, torch.nn.modules.batchnorm._BatchNorm) for b in pruned.modules())


def test_batchnorm_shared_by_two_readers_is_not_folded():
    """A conv output read by a BatchNorm and by a residual add: folding would change the add, so it is left."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    folded = fold_batchnorm(net, x)
    assert isinstance(folded.bn, torch.nn.BatchNorm2d)
    assert torch.allclose(folded(x), net(x))


@pytest.mark.parametrize("name", [n for n in FAMILIES if n in HF])
def test_hugging_face_folder_round_trips(pruned_zoo, name, tmp_path):
    """Non-uniform widths (global allocator) through the documented loader; uniform ones through plain
    from_pretrained, whenever the rewritten config can describe them."""
    import transformers

    from prunekit.export.hf import save_pretrained

    pruned, plan = pruned_zoo(name)
    check = zoo_inputs(name, seed=1)
    save_pretrained(pruned, plan, tmp_path / "nonuniform")
    again = load_pretrained(tmp_path / "nonuniform")
    assert relative_error(outputs(pruned, check), outputs(again, check)) <= TOL

    import prunekit
    from prunekit.models import build

    model = build(name, pretrained=False).eval()
    x = zoo_inputs(name)
    uniform_plan = prunekit.plan(model, x, ratio=0.5, allocator="uniform")
    uniform = prunekit.apply(model, uniform_plan, x)
    save_pretrained(uniform, uniform_plan, tmp_path / "uniform")
    if not getattr(uniform.config, "prunekit_nonuniform", None):
        cls = getattr(transformers, type(uniform).__name__)
        plain = cls.from_pretrained(tmp_path / "uniform", local_files_only=True).eval()
        assert relative_error(outputs(uniform, check), outputs(plain, check)) <= TOL
    assert relative_error(outputs(uniform, check), outputs(load_pretrained(tmp_path / "uniform"), check)) <= TOL


def test_uniform_llama_config_describes_the_pruned_model(pruned_zoo):
    import prunekit
    from prunekit.models import build

    model = build("hf_tiny_llama", pretrained=False).eval()
    x = zoo_inputs("hf_tiny_llama")
    pruned = prunekit.apply(model, prunekit.plan(model, x, ratio=0.5, allocator="uniform"), x)
    assert not getattr(pruned.config, "prunekit_nonuniform", None)


@pytest.mark.parametrize("name", EXPORT_FAMILIES)
def test_onnx_export_matches_onnxruntime(pruned_zoo, name, tmp_path):
    pruned, _ = pruned_zoo(name)
    result = export_onnx_checked(pruned, zoo_inputs(name), tmp_path / "m.onnx", check_inputs=zoo_inputs(name, 1),
                                 tolerance=TOL)
    assert result.passed and result.relative_error <= TOL


@pytest.mark.parametrize("name", EXPORT_FAMILIES)  # the YOLOv8 refusal: tests/cli/test_cli_export.py
def test_torch_export_runs_and_matches(pruned_zoo, name, tmp_path):
    pruned, _ = pruned_zoo(name)
    program = export_program(pruned, zoo_inputs(name), tmp_path / "m.pt2", check_inputs=zoo_inputs(name, 1),
                             tolerance=TOL)
    reloaded = torch.export.load(str(tmp_path / "m.pt2"))
    check = zoo_inputs(name, 1)
    args = (check,) if isinstance(check, torch.Tensor) else tuple(check)
    assert relative_error(list(program.module()(*args)), list(reloaded.module()(*args))) <= TOL
    assert relative_error(outputs(pruned, check), list(reloaded.module()(*args))) <= TOL
