"""`prunekit ls`: what the registries hold."""
from __future__ import annotations

COMMAND = "ls"
HELP = "list registered models, datasets, criteria, allocators, presses and recipes"


def add_arguments(parser) -> None:
    parser.add_argument("kind", nargs="?", default=None, help="one registry (e.g. models, datasets); all if omitted")


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..registry import all_registries

    registries = all_registries()
    names = {kind: registry.plural for kind, registry in registries.items()}
    aliases = {word: kind for kind, word in names.items()}
    aliases.update({kind: kind for kind in registries})  # the singular works too (ls criterion)
    kinds = sorted(registries)
    if args.kind:
        kind = aliases.get(args.kind)
        if kind is None:
            from ..errors import UnknownNameError

            raise UnknownNameError(f"unknown registry '{args.kind}'; known: {', '.join(names[k] for k in kinds)}")
        kinds = [kind]
    console = Console()
    for kind in kinds:
        table = Table(title=names[kind], show_lines=False)
        table.add_column("name")
        table.add_column("description")
        for name in registries[kind].names():
            table.add_row(name, registries[kind].describe(name))
        console.print(table)
    return 0
