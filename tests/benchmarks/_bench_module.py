"""Loading a benchmark script as a module inside a test (benchmarks/ is a folder of scripts, not a package)."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@contextlib.contextmanager
def bench_module(script: str, name: str) -> Iterator[ModuleType]:
    """``benchmarks/<script>`` loaded as module `name`; benchmarks/ stays on ``sys.path`` (for the script's own
    ``_common``-style imports) and the module in ``sys.modules`` until the block ends."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(BENCH))
