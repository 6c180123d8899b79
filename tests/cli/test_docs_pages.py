"""Every recipe and every KV press has a docs page whose command is valid: recipe commands resolve their config
(``--print-config``), press commands name a real press and settings it has."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from prunekit.cli.main import main
from prunekit.kvcache import PRESSES
from prunekit.methods import RECIPES

DOCS = Path(__file__).resolve().parents[2] / "docs"
REPO = DOCS.parent


def _command(page: Path) -> list:
    block = re.search(r"```bash\n(.*?)```", page.read_text(), re.S)
    assert block, f"{page} has no command"
    return shlex.split(block.group(1).replace("\\\n", " "))


@pytest.mark.parametrize("name", RECIPES.names())
def test_recipe_page_command_resolves(name, monkeypatch, capsys):
    page = DOCS / "recipes" / f"{name}.md"
    assert page.exists(), f"recipe '{name}' has no docs page ({page})"
    words = _command(page)
    assert words[:3] == ["prunekit", "run", name]
    monkeypatch.chdir(REPO)  # the commands name examples/ relative to the repository
    assert main(words[1:] + ["--print-config"]) == 0, capsys.readouterr().err
    assert '"out_dir"' in capsys.readouterr().out


@pytest.mark.parametrize("name", PRESSES.names())
def test_press_page_command_is_valid(name):
    from prunekit.config import apply_overrides, from_dict

    page = DOCS / "presses" / f"{name}.md"
    assert page.exists(), f"KV press '{name}' has no docs page ({page})"
    words = _command(page)
    assert words[:3] == ["prunekit", "kv", "eval"] and words[words.index("--method") + 1] == name
    from prunekit.cli.main import build_parser

    build_parser().parse_args(words[1:])  # every flag exists
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    from_dict(PRESSES.get(name), apply_overrides({}, overrides))  # every setting exists and is valid
