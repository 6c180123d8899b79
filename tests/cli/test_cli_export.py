"""`prunekit prune` with a data-driven criterion, then `prunekit export --onnx / --torch-export` on the folder; the
clear error when an exporter refuses; eval / bench on a pruned folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import prunekit
from prunekit.cli.main import main


@pytest.fixture(scope="module")
def taylor_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "resnet20"
    rc = main(["prune", "--model", "cifar_resnet20", "--criterion", "taylor", "--data", "cifar10",
               "--calibration-batches", "2", "--budget", "macs:0.5", "--latency", "false", "--out", str(out)])
    assert rc == 0
    return out


def test_taylor_prune_then_onnx_export_matches_on_held_out_images(taylor_folder, capsys):
    plan = json.loads((taylor_folder / "plan.json").read_text())
    assert plan["model_spec"] == {"registry": "cifar_resnet20"}
    assert "taylor" in json.dumps(plan["provenance"])
    assert main(["export", str(taylor_folder), "--onnx"]) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    import onnxruntime as ort

    from prunekit.data import load
    from prunekit.models import info

    meta = info("cifar_resnet20")
    test = load("cifar10", "test", normalize=(meta.mean, meta.std), limit=64)
    shape = plan["inputs"]["shape"]  # the ONNX graph has the plan's fixed input shape
    images = torch.stack([test[i][0] for i in range(40, 40 + shape[0])])  # held out: never calibrated on
    model = prunekit.load(taylor_folder).eval()
    with torch.no_grad():
        expected = model(images).numpy()
    session = ort.InferenceSession(str(taylor_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_torch_export_of_the_folder(taylor_folder, capsys):
    assert main(["export", str(taylor_folder), "--torch-export"]) == 0
    program = torch.export.load(str(taylor_folder / "model.pt2"))
    x = torch.randn(2, 3, 32, 32)
    model = prunekit.load(taylor_folder).eval()
    with torch.no_grad():
        assert torch.allclose(program.module()(x)[0], model(x), rtol=1e-4, atol=1e-5)


def test_eval_and_bench_accept_a_pruned_folder(taylor_folder, capsys):
    assert main(["eval", "--model", str(taylor_folder), "--data", "cifar10", "--limit", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "accuracy" and report["items"] == 64
    assert main(["bench", "--model", str(taylor_folder), "--repeats", "1", "--warmup", "0", "--no-onnx",
                 "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    pruned_report = json.loads((taylor_folder / "report.json").read_text())
    assert bench["params"] == pruned_report["after"]["params"]
    assert bench["macs"] == pruned_report["after"]["macs"]  # both per example, whatever batch measured them


def test_exporter_refusal_is_a_clear_cli_error(tmp_path, capsys):
    """torch.export refuses the YOLOv8 head (it decodes boxes with a data-dependent stride.item()): the CLI says so
    in one line naming the exporter, the model and the reason, exit status 1, and writes no file."""
    out = tmp_path / "yolo"
    assert main(["prune", "--model", "yolov8n", "--input-shape", "1,3,64,64", "--ratio", "0.3", "--latency", "false",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", str(out), "--torch-export"]) == 1
    err = capsys.readouterr().err
    assert "prunekit export: error: torch.export of YOLOv8 failed" in err
    assert "data-dependent" in err
    assert not (out / "model.pt2").exists() and not list(out.glob(".model.pt2*"))


def test_run_starts_a_recipe_from_a_pruned_folder(taylor_folder, tmp_path, capsys, monkeypatch):
    """`prunekit run udfc --model DIR`: the data-free recipe compresses the pruned model further; its artifact
    reloads on its own (the plan names the pruned folder it started from, loaded by the same safe rules)."""
    from pathlib import Path

    from prunekit.quant.artifact import load_quantized

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    out = tmp_path / "udfc"
    assert main(["run", "udfc", "--config", "examples/udfc_cifar_resnet56.yaml", "--model", str(taylor_folder),
                 "--set", "task.test_limit=32", "--set", f"out_dir={out}"]) == 0
    result = json.loads((out / "result.json").read_text())
    folder_params = json.loads((taylor_folder / "report.json").read_text())["after"]["params"]
    assert result["original"]["params"] == folder_params and result["params"] < folder_params
    again = load_quantized(result["model_dir"])
    assert sum(p.numel() for p in again.parameters()) == result["params"]
