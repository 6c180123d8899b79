"""The wheel builds, installs into a fresh virtual environment with its [hf,onnx] extras, and works from there.

Offline and fast: the venv sees the system site-packages (where torch, transformers and onnxruntime already are),
so ``pip install --no-index 'prunekit-*.whl[hf,onnx]'`` resolves every requirement of the package and its extras
against what is installed and fails if one is missing; only prunekit itself is installed into the venv.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import prunekit

REPO = Path(__file__).resolve().parents[2]


def _run(cmd, cwd, env=None):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=3600, env=env)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    import shutil

    src = tmp_path / "src"  # a copy, so the build never writes build/ or *.egg-info into the repository
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "tests", "benchmarks", "docs", "examples",
                                                             "__pycache__", "*.egg-info", "build", "runs", "out"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
          str(src)], tmp_path)
    wheel = next((tmp_path / "dist").glob("prunekit-*.whl"))
    assert wheel.name.startswith(f"prunekit-{prunekit.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "prunekit/export/checkpoint.py" in names and "prunekit/cli/export.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(tmp_path / "venv")], tmp_path)
    python = str(tmp_path / "venv" / "bin" / "python")
    _run([python, "-m", "pip", "install", "--no-index", "-q", f"{wheel}[hf,onnx]"], tmp_path)
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    script = (
        "import prunekit, torch, sys\n"
        "assert prunekit.__file__.startswith(sys.prefix), prunekit.__file__\n"  # the venv's copy, not the repo
        "from prunekit.models import build, example_inputs\n"
        "m = build('digits_cnn', pretrained=False).eval(); x = example_inputs('digits_cnn')\n"
        "plan = prunekit.plan(m, x, ratio=0.5); p = prunekit.apply(m, plan, x)\n"
        "prunekit.save(p, plan, 'ckpt')\n"
        "print(prunekit.__version__)\n"
    )
    assert _run([python, "-c", script], tmp_path, env).strip() == prunekit.__version__
    cli = str(tmp_path / "venv" / "bin" / "prunekit")
    assert "--torch-export" in _run([cli, "export", "--help"], tmp_path, env)  # the console script, all commands
