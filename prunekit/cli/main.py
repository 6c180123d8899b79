"""Entry point of the `prunekit` command.

Every module in this package (other than this one and those starting with ``_``) is a subcommand: it defines
``COMMAND`` (its name), ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Adding a subcommand is adding a
file; nothing here needs editing. Heavy imports belong inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

from ..errors import PrunekitError


def _subcommand_modules():
    package = importlib.import_module("prunekit.cli")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name == "main" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"prunekit.cli.{info.name}")
        if hasattr(module, "COMMAND"):
            yield module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description="Structured pruning of PyTorch models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _subcommand_modules():
        cmd = sub.add_parser(module.COMMAND, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except PrunekitError as exc:
        if args.debug:
            raise
        print(f"prunekit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"prunekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
