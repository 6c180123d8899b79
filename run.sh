#!/usr/bin/env bash
# The two commands of the README:
#   bash run.sh demo   set up, then run the main job (`prunekit demo`) on built-in defaults
#   bash run.sh test   set up, then run the test suite
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
case "${1:-demo}" in
  demo) shift || true; exec python3 -m prunekit demo "$@" ;;
  test) shift || true; exec python3 -m pytest -q tests "$@" ;;
  *) echo "usage: bash run.sh [demo|test] [extra args]" >&2; exit 2 ;;
esac
