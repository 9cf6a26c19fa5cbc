"""The Colab fine-tuning notebook: valid nbformat, valid Python, and the commands it runs exist."""

from __future__ import annotations

import ast
import json
import re

from conftest import REPO_ROOT

from kanitts.cli import build_parser

NOTEBOOK = REPO_ROOT / "notebooks" / "kanitts_finetune_colab.ipynb"


def _code_cells() -> list[str]:
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_code_cells_are_python_once_shell_lines_are_removed():
    for cell in _code_cells():
        python = "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in cell.splitlines())
        ast.parse(python)


def test_commands_the_notebook_runs_exist():
    text = "\n".join(_code_cells())
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in set(re.findall(r"!make (\S+)", text)):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in set(re.findall(r"kanitts (\S+)", text)):
        assert command in commands, command
