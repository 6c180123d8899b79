"""No untrusted input runs code: a hostile plan.json, config file, YAML, safetensors metadata, Hugging Face config,
pickled weights file or report file leaves no trace (each tries to create a marker file; it must not appear)."""
from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

import prunekit
from prunekit.errors import CheckpointError, ConfigError
from prunekit.models import build, example_inputs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A genuine pruned digits_cnn checkpoint folder (registry model)."""
    folder = tmp_path_factory.mktemp("ckpt") / "good"
    model = build("digits_cnn", pretrained=False).eval()
    x = example_inputs("digits_cnn")
    plan = prunekit.plan(model, x, ratio=0.5)
    prunekit.save(prunekit.apply(model, plan, x), plan, folder)
    return folder


def _copy(checkpoint, tmp_path):
    dest = tmp_path / "ckpt"
    shutil.copytree(checkpoint, dest)
    return dest


def _edit_plan(folder, **changes):
    data = json.loads((folder / "plan.json").read_text())
    data.update(changes)
    (folder / "plan.json").write_text(json.dumps(data))


def test_plan_naming_os_system_runs_nothing(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    folder = _copy(checkpoint, tmp_path)
    _edit_plan(folder, model_spec={"factory": "os:system", "kwargs": {"command": f"touch {marker}"}})
    with pytest.raises(ConfigError) as err:
        prunekit.load(folder)
    assert not marker.exists()
    message = str(err.value)
    assert "os:system" in message and "allow_factory='os:system'" in message and "model=" in message
    with pytest.raises(ConfigError):  # allowing another name does not allow this one
        prunekit.load(folder, allow_factory="os:popen")
    assert not marker.exists()
    # the CLI refuses the same way, naming the option that would allow it
    from prunekit.cli.main import main

    assert main(["export", str(folder), "--onnx"]) == 1
    assert main(["eval", "--model", str(folder), "--data", "digits"]) == 1
    assert not marker.exists()


def test_factory_runs_only_when_the_caller_allows_exactly_it(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    _edit_plan(folder, model_spec={"factory": "prunekit.models.digits_cnn:digits_cnn",
                                   "kwargs": {"pretrained": False}})
    with pytest.raises(ConfigError, match="allow_factory"):
        prunekit.load(folder)
    reference = prunekit.load(checkpoint)
    x = example_inputs("digits_cnn")
    allowed = prunekit.load(folder, allow_factory="prunekit.models.digits_cnn:digits_cnn")
    assert torch.equal(allowed(x), reference(x))
    from prunekit.models.digits_cnn import digits_cnn

    passed = prunekit.load(folder, factory=digits_cnn)
    assert torch.equal(passed(x), reference(x))


def test_plan_kwargs_must_be_plain_json(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    _edit_plan(folder, model_spec={"registry": "digits_cnn", "kwargs": "__import__('os')"})
    with pytest.raises(CheckpointError, match="kwargs"):
        prunekit.load(folder)


def test_yaml_config_with_python_tags_is_refused(tmp_path):
    from prunekit.config import read_config_file

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="malformed config"):
        read_config_file(path)
    assert not marker.exists()
    # the same through a --set override: the value stays an inert string or is refused
    from prunekit.config import apply_overrides

    data = apply_overrides({}, [f"model=!!python/object/apply:os.system ['touch {marker}']"])
    assert isinstance(data["model"], str) and not marker.exists()


def test_safetensors_metadata_is_never_acted_on(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from prunekit.export.checkpoint import sha256_file
    from prunekit.io import safetensors_metadata

    marker = tmp_path / "pwned"
    folder = _copy(checkpoint, tmp_path)
    weights = folder / "model.safetensors"
    hostile = {"format": "pickle", "factory": "os:system", "command": f"touch {marker}",
               "__reduce__": f"os.system('touch {marker}')"}
    save_file(load_file(str(weights)), str(weights), metadata=hostile)
    _edit_plan(folder, weights={"file": "model.safetensors", "sha256": sha256_file(weights)})
    model = prunekit.load(folder)
    x = example_inputs("digits_cnn")
    assert torch.equal(model(x), prunekit.load(checkpoint)(x))
    assert safetensors_metadata(weights)["factory"] == "os:system"  # read as a plain string, nothing more
    assert not marker.exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_pickled_weights_are_refused_without_unpickling(tmp_path):
    from prunekit.io import load_tensors

    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps({"w": _Evil(marker)}))
    with pytest.raises(CheckpointError):
        load_tensors(path)
    assert not marker.exists()


def test_hugging_face_config_naming_remote_code_is_refused(checkpoint, tmp_path):
    from prunekit.export import load_pretrained
    from prunekit.export.model_spec import build_hf_from_config_file

    marker = tmp_path / "pwned"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "evil.py").write_text(f"import os\nos.system('touch {marker}')\n")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["EvilModel"], "model_type": "evil",
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    with pytest.raises(CheckpointError, match="not a model class of the transformers library"):
        load_pretrained(folder)
    (folder / "original.json").write_text(json.dumps({"class": "os.system", "config": {"model_type": "llama"}}))
    with pytest.raises(CheckpointError, match="not a model class"):
        build_hf_from_config_file(folder / "original.json")
    # a plan whose original config names a non-transformers class, in a checkpoint folder
    ckpt = _copy(checkpoint, tmp_path)
    _edit_plan(ckpt, model_spec={})
    (ckpt / "original_config.json").write_text(json.dumps({"class": "EvilModel", "config": {"model_type": "evil",
                                                           "auto_map": {"AutoModel": "evil.EvilModel"}}}))
    with pytest.raises(CheckpointError, match="not a model class"):
        prunekit.load(ckpt)
    assert not marker.exists()


def test_hostile_report_files_are_inert(checkpoint, tmp_path, capsys):
    """Report files are written for people; nothing that loads, evaluates or exports a folder reads them."""
    marker = tmp_path / "pwned"
    folder = _copy(checkpoint, tmp_path)
    (folder / "report.json").write_text(json.dumps({"__class__": "os.system", "factory": "os:system",
                                                    "command": f"touch {marker}"}))
    (folder / "report.md").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    from prunekit.cli.main import main

    assert main(["bench", "--model", str(folder), "--repeats", "1", "--warmup", "0", "--no-onnx", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] > 0
    prunekit.load(folder)
    assert not marker.exists()


def test_low_bit_artifact_naming_a_factory_runs_nothing(tmp_path):
    from prunekit.quant.artifact import FORMAT, META_FILE, load_quantized

    marker = tmp_path / "pwned"
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / META_FILE).write_text(json.dumps({"format": FORMAT, "bits": 8, "model_spec": {
        "factory": "os:system", "kwargs": {"command": f"touch {marker}"}}}))
    with pytest.raises(ConfigError, match="allow_factory"):
        load_quantized(folder)
    assert not marker.exists()


def test_a_loop_of_checkpoint_folders_is_refused(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    _edit_plan(folder, model_spec={"checkpoint": str(folder)})
    with pytest.raises(CheckpointError, match="loops"):
        prunekit.load(folder)


_EVIL_MODULE = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported")


def build():
    pathlib.Path({marker!r}).write_text("called")
    from prunekit.models import build as registry_build
    return registry_build("digits_cnn", pretrained=False)
'''


def test_config_file_naming_a_factory_runs_nothing(tmp_path, monkeypatch, capsys):
    """`model: module:function` in a --config YAML is refused before anything is imported; the same name typed as
    --model on the command line is the user's own choice and runs."""
    from prunekit.cli.main import main

    marker = tmp_path / "pwned"
    (tmp_path / "evil_factory_mod.py").write_text(_EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "hostile.yaml"
    config.write_text("model: evil_factory_mod:build\nratio: 0.5\n")
    out = tmp_path / "out"
    assert main(["prune", "--config", str(config), "--out", str(out), "--latency", "false"]) == 1
    err = capsys.readouterr().err
    assert "config key 'model'" in err and "evil_factory_mod:build" in err and "--model" in err
    assert not marker.exists() and not out.exists()
    # a --set in the config's place (or an override of some other key) does not launder the file's value
    assert main(["prune", "--config", str(config), "--set", "ratio=0.25", "--out", str(out)]) == 1
    assert not marker.exists()
    from prunekit.cli.prune import PruneConfig, prune_to_folder

    with pytest.raises(ConfigError, match="config key 'model'"):  # Python callers allow the exact name
        prune_to_folder(PruneConfig(model="evil_factory_mod:build", out=str(out)), allow_factory="other:fn")
    assert not marker.exists()
    # typed on the command line itself, the factory is the user's choice
    assert main(["prune", "--config", str(config), "--model", "evil_factory_mod:build", "--out", str(out),
                 "--input-shape", "2,1,8,8", "--latency", "false"]) == 0
    assert marker.read_text() == "called"
