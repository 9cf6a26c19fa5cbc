"""The Colab fine-tuning notebook: valid nbformat, valid Python, one repository URL, the commands it
runs exist, and its cells run top to bottom."""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import numpy as np

from kanitts.cli import build_parser

from conftest import REPO_ROOT

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
    for command in set(re.findall(r"(?:^!|bin/)kanitts (\S+)", text, re.M)):
        assert command in commands, command


def _repository_url() -> str:
    """The project's URL, as pyproject.toml states it."""
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def test_one_repository_url_is_set_at_the_top_and_used_everywhere():
    assert not re.search(r"your-org|your-username|<your", NOTEBOOK.read_text(), re.I)
    cells = _code_cells()
    assert re.findall(r'^REPO_URL = "([^"]+)"$', cells[0], re.M) == [_repository_url()]
    assert [url for cell in cells for url in re.findall(r"https?://[^\s\"']+", cell)] == [_repository_url()]
    clones = [line for cell in cells for line in cell.splitlines() if "git clone" in line]
    assert clones and all("{REPO_URL}" in line for line in clones)


def test_cells_run_top_to_bottom(tmp_path, monkeypatch):
    """Every code cell in order, in one namespace, in a copy of the repository's config folder.

    Shell lines are recorded with their ``{VARIABLES}`` filled in, as IPython does, instead of run;
    `make test-config` runs the real check on what the cells wrote, and the files `make eval`
    writes are stood in for by results in eval's own format.
    """
    import shutil
    import sys
    import types

    from kanitts.audio import write_wav
    from kanitts.config import load_configs
    from kanitts.evaluation.results import CSV_COLUMNS, RESULTS_CSV
    from kanitts.recipes.check import check_config_dir

    shutil.copytree(REPO_ROOT / "config", tmp_path / "config")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("getpass.getpass", lambda prompt: "typed-in")
    for name in ("HF_TOKEN", "WANDB_API_KEY"):  # the cells set them; restored afterwards
        monkeypatch.setenv(name, "")
    shown = []
    display = types.ModuleType("IPython.display")
    display.Audio, display.display = Path, shown.append
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display)

    commands = []

    def shell(line: str) -> None:
        command = line.format_map(namespace)
        commands.append(command)
        if command == "make test-config":
            report = check_config_dir(Path("config"))
            assert report.errors == [], report.errors
        if command == "make eval":
            eval_cfg = load_configs(Path("config"), kinds=("eval",)).eval
            audio_dir = Path(eval_cfg.paths.audio_output_dir)
            write_wav(audio_dir / "base" / "hello.wav", np.zeros(2205, dtype=np.float32), 22050)
            row = dict.fromkeys(CSV_COLUMNS, "") | {"experiment_id": "base", "sentence_id": "hello",
                                                     "sentence": "alice: Hello", "audio": "base/hello.wav"}
            with open(audio_dir / RESULTS_CSV, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
                writer.writeheader()
                writer.writerow(row)

    namespace = {"__shell__": shell}
    for cell in _code_cells():
        python = "\n".join(
            f"__shell__({line.strip()[1:]!r})" if line.strip().startswith(("!", "%")) else line
            for line in cell.splitlines()
        )
        exec(compile(python, str(NOTEBOOK), "exec"), namespace)

    assert commands[:3] == [
        f"test -d /content/kanitts || git clone {_repository_url()} /content/kanitts",
        "cd /content/kanitts",
        "make setup",
    ]
    assert '.venv/bin/kanitts prepare "/content/my_recordings" --output data/alice --speaker alice --resume' in commands
    assert [str(p) for p in shown] == ["audio_samples/base/hello.wav"] and all(p.is_file() for p in shown)
