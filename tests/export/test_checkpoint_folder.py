"""Checkpoint folders as a new user meets them: the README example reloads, Hugging Face models reload from the
config saved beside them, folders are replaced atomically with the user's umask, a bad destination is refused
before the work, modified weights are caught by their checksum, and a prune that removes nothing says so."""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.errors import CheckpointError
from prunekit.models import build, example_inputs

README = Path(__file__).resolve().parents[2] / "README.md"


def _digits_checkpoint():
    model = build("digits_cnn", pretrained=False).eval()
    x = example_inputs("digits_cnn")
    plan = prunekit.plan(model, x, ratio=0.5)
    return prunekit.apply(model, plan, x), plan, x


def test_readme_api_example_runs_end_to_end(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"## Python API\s+```python\n(.*?)```", text, re.S).group(1)
    assert 'prunekit.load("out/")' in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    again, pruned, x = namespace["again"], namespace["pruned"], namespace["x"]
    with torch.no_grad():
        assert torch.allclose(again(x), pruned(x), atol=1e-6)
    assert json.loads((tmp_path / "out" / "plan.json").read_text())["model_spec"]["registry"] == "cifar_resnet56_b"


def test_hugging_face_model_outside_the_registry_reloads_from_its_saved_config(tmp_path):
    from prunekit.export import load_pretrained
    from prunekit.models.hf import build_from_config

    model = build_from_config("llama")  # not through the registry: only the saved config can rebuild it
    x = torch.randint(0, 256, (2, 8))
    plan = prunekit.plan(model, x, ratio=0.5, allocator="global")
    pruned = prunekit.apply(model, plan, x)
    prunekit.save(pruned, plan, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "plan.json").read_text())["model_spec"] == {}
    assert (tmp_path / "out" / "original_config.json").exists() and (tmp_path / "out" / "hf").is_dir()
    with torch.no_grad():
        expected = pruned(x).logits
        assert torch.allclose(prunekit.load(tmp_path / "out")(x).logits, expected, atol=1e-5)
        assert torch.allclose(load_pretrained(tmp_path / "out" / "hf")(x).logits, expected, atol=1e-5)


def test_reused_folder_is_replaced_whole_and_a_failure_keeps_the_earlier_one(tmp_path):
    from prunekit.models.hf import build_from_config

    out = tmp_path / "out"
    hf_model = build_from_config("llama")
    tokens = torch.randint(0, 256, (2, 8))
    hf_plan = prunekit.plan(hf_model, tokens, ratio=0.5)
    prunekit.save(prunekit.apply(hf_model, hf_plan, tokens), hf_plan, out)
    assert (out / "hf").is_dir()
    pruned, plan, x = _digits_checkpoint()
    prunekit.save(pruned, plan, out)
    assert not (out / "hf").exists() and not (out / "original_config.json").exists()  # nothing stale left
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(folder):
        (folder / "report.json").write_text("{}")
        raise RuntimeError("disk full")

    other = prunekit.apply(build("digits_cnn", pretrained=False).eval(), plan, x)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        prunekit.save(other, plan, out, extra=crash)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind
    assert torch.equal(prunekit.load(out)(x), pruned(x))


def test_files_follow_the_users_umask(tmp_path):
    pruned, plan, _ = _digits_checkpoint()
    for mask, expected in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(mask)
        try:
            prunekit.save(pruned, plan, tmp_path / f"out{mask:o}")
        finally:
            os.umask(old)
        for name in ("model.safetensors", "plan.json"):
            assert stat.S_IMODE((tmp_path / f"out{mask:o}" / name).stat().st_mode) == expected, (name, oct(mask))
        assert stat.S_IMODE((tmp_path / f"out{mask:o}").stat().st_mode) == expected | 0o111 & ~mask


def test_bad_destinations_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from prunekit.cli import _models
    from prunekit.cli.main import main

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the destination was checked")

    monkeypatch.setattr(_models, "resolve_model", never)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["prune", "--model", "digits_cnn", "--out", str(afile)]) == 1
    assert "is a file" in capsys.readouterr().err
    assert main(["prune", "--model", "digits_cnn", "--out", str(afile / "sub")]) == 1
    assert "is a file" in capsys.readouterr().err
    mine = tmp_path / "my_documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    assert main(["prune", "--model", "digits_cnn", "--out", str(mine)]) == 1
    assert "not empty and holds no prunekit checkpoint" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "keep me"
    if os.geteuid() != 0:  # root writes anywhere: only checkable as a normal user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["prune", "--model", "digits_cnn", "--out", str(locked / "out")]) == 1
        assert "not writable" in capsys.readouterr().err


def test_overwritten_weights_with_intact_header_are_caught(tmp_path):
    pruned, plan, _ = _digits_checkpoint()
    out = prunekit.save(pruned, plan, tmp_path / "out")
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in range(header + 100, header + 140):  # numbers changed, header untouched: safetensors still reads it
        data[i] ^= 0x5A
    weights.write_bytes(bytes(data))
    from safetensors.torch import load_file

    load_file(str(weights))  # the file itself is still valid
    with pytest.raises(CheckpointError, match="checksum"):
        prunekit.load(out)


def test_a_prune_that_removes_nothing_says_so(tmp_path, capsys):
    from prunekit.cli.main import main

    assert main(["prune", "--model", "digits_cnn", "--ignore", "*", "--latency", "false",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "removes nothing" in " ".join(out.split())


def test_demo_writes_outside_the_current_folder_and_flags_chance_accuracy(tmp_path, monkeypatch, capsys):
    """An untrained network pruned one-shot is at chance: the demo says so; it writes under the user's cache
    folder, never into the current folder (which may be a repository); MACs are per example."""
    from prunekit.cli.main import main
    from prunekit.metrics.macs import count_macs

    cwd, cache = tmp_path / "repo", tmp_path / "cache"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(cache))
    assert main(["demo", "--train-epochs", "0", "--finetune-epochs", "0", "--eval-limit", "100"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "at chance level" in text and "one-shot accuracy" in text
    assert list(cwd.iterdir()) == []
    report = json.loads((cache / "demo" / "report.json").read_text())
    one = build("digits_cnn", pretrained=False).eval()
    assert report["before"]["macs"] == count_macs(one, example_inputs("digits_cnn", batch=1))


def test_chance_and_nothing_removed_messages():
    from prunekit.metrics.sanity import at_chance_message, nothing_removed_message

    assert at_chance_message(0.11, 10) and at_chance_message(0.9, 10) is None and at_chance_message(None, 10) is None
    pruned, plan, _ = _digits_checkpoint()
    assert nothing_removed_message(plan) is None
    empty = prunekit.PruningPlan(plan.model_fingerprint, {k: [] for k in plan.removed}, plan.group_sizes)
    assert "removes nothing" in nothing_removed_message(empty)


def test_cli_prune_of_a_hugging_face_folder_reloads_with_prunekit_load(tmp_path, capsys):
    """The README's third kind of --model: a Hugging Face folder; `prunekit.load(out)` rebuilds it from the config
    saved beside the weights, without the source folder."""
    import shutil

    from prunekit.cli.main import main
    from prunekit.models.hf import build_from_config

    source = tmp_path / "my_llama"
    build_from_config("llama").save_pretrained(source)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(source), "--tokens", "2,8", "--latency", "false", "--out", str(out)]) == 0
    assert "Hugging Face folder" in capsys.readouterr().out
    shutil.rmtree(source)  # the checkpoint must not need it
    x = torch.randint(0, 256, (2, 8))
    again = prunekit.load(out)
    from prunekit.export import load_pretrained

    with torch.no_grad():
        assert torch.allclose(again(x).logits, load_pretrained(out / "hf")(x).logits, atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert sum(p.numel() for p in again.parameters()) == report["after"]["params"]
