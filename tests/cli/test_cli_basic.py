"""The `env`, `ls`, `eval` and `bench` subcommands through `prunekit.cli.main.main`."""
from __future__ import annotations

import json

import pytest

from prunekit.cli.main import main


def _json_out(capsys):
    return json.loads(capsys.readouterr().out)


def test_env_reports_versions(capsys):
    assert main(["env", "--json"]) == 0
    report = _json_out(capsys)
    import torch

    assert report["torch"] == torch.__version__ and "onnxruntime" in report


def test_ls_lists_models_and_datasets(capsys):
    assert main(["ls", "models"]) == 0
    out = capsys.readouterr().out
    assert "cifar_resnet56" in out and "smollm2_135m" in out
    assert main(["ls", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "cifar10_raw" in out and "wikitext2" in out


def test_unknown_model_and_dataset_list_the_known_names(capsys):
    assert main(["eval", "--model", "resnet_57", "--data", "digits"]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'resnet_57'" in err and "cifar_resnet56" in err and "digits_cnn" in err
    assert main(["eval", "--model", "digits_cnn", "--data", "cifar11"]) == 1
    err = capsys.readouterr().err
    assert "unknown dataset 'cifar11'" in err and "cifar10_raw" in err and "wikitext2" in err
    assert main(["bench", "--model", "nope"]) == 1
    assert "Known models" in capsys.readouterr().err


def test_eval_untrained_digits_cnn(capsys):
    assert main(["eval", "--model", "digits_cnn", "--data", "digits", "--json"]) == 0
    report = _json_out(capsys)
    assert report["metric"] == "accuracy" and report["items"] == 359 and 0.0 <= report["value"] <= 1.0
    assert main(["eval", "--model", "digits_cnn", "--data", "digits", "--limit", "50"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "50" in out


def test_eval_pretrained_resnet20_on_raw_subset(capsys):
    assert main(["eval", "--model", "cifar_resnet20", "--data", "cifar10_raw", "--limit", "256", "--json"]) == 0
    report = _json_out(capsys)
    assert report["items"] == 256 and report["value"] >= 0.87


def test_bench_digits_cnn(capsys):
    from prunekit.metrics.params import count_parameters
    from prunekit.models import build

    assert main(["bench", "--model", "digits_cnn", "--repeats", "3", "--warmup", "1", "--json"]) == 0
    report = _json_out(capsys)
    assert report["params"] == count_parameters(build("digits_cnn", pretrained=False))
    # conv 1->32, 32->64 at 8x8, conv 64->64 at 4x4, linear 64->10
    assert report["macs"] == 64 * 32 * 9 + 64 * 64 * 32 * 9 + 16 * 64 * 64 * 9 + 64 * 10
    assert report["eager_ms"] > 0 and isinstance(report["onnxruntime_ms"], float) and report["onnxruntime_ms"] > 0
