"""The config files users start from, tested as they ship: config/ through the whole pipeline,
every YAML example of the docs, and the layouts of the reference pipeline's README."""

from __future__ import annotations

import csv
import json
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from kanitts.cli import main
from kanitts.config import (
    CONFIG_FILES,
    ConfigLoader,
    load_configs,
    parse_config,
)
from kanitts.errors import ConfigError
from kanitts.recipes.check import check_config_dir

from conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "config"
REFERENCE = REPO_ROOT / "tests" / "data" / "reference_configs"
KINDS = {name: kind for kind, name in CONFIG_FILES.items()}


def _replace_once(path: Path, old: str, new: str) -> None:
    """Edit one line of a shipped file as text, so every other byte (`5e-5` too) stays as shipped."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{path.name} no longer contains {old!r} once: update this test"
    path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.fixture(scope="module")
def shipped_project(tmp_path_factory, tiny_codec_dir):
    """config/ copied as shipped, pointed at a tiny base model, dataset and codec (nothing else changed
    but the amount of work, below)."""
    from kanitts.tiny import build_lfm2, build_tokenizer
    from kanitts.tokens import TokenLayout

    root = tmp_path_factory.mktemp("shipped")
    config = root / "config"
    shutil.copytree(SHIPPED, config, ignore=shutil.ignore_patterns("kanade"))
    model_cfg = load_configs(SHIPPED, kinds=("model",)).model
    # A tiny LFM2 with the shipped token space, so model_config.yaml's token ids stay as shipped.
    base = root / "base_model"
    build_lfm2(base, vocab_size=TokenLayout.from_config(model_cfg).vocab_size, hidden_size=16,
               intermediate_size=32, layer_types=("conv", "full_attention"), tokenizer=build_tokenizer(base))

    import datasets

    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        frames = int(rng.integers(4, 12))
        codes = rng.integers(0, model_cfg.codec.codebook_size, size=(4, frames))
        rows.append({"text": f"Sentence number {i}.", "encoded_len": frames,
                     **{f"nano_layer_{k + 1}": codes[k].tolist() for k in range(4)}})
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "alice-voice-nano"))

    _replace_once(config / "experiments.yaml", 'base_model: "nineninesix/kani-tts-400m-0.3-pt"',
                  f'base_model: "{base}"')
    _replace_once(config / "dataset_config.yaml", 'reponame: "your-username/alice-voice-nano"',
                  f'reponame: "{root / "alice-voice-nano"}"')
    _replace_once(config / "model_config.yaml", 'weights: "nineninesix/nemo-nano-codec-22khz-0.6kbps-12.5fps-pytorch"',
                  f'weights: "{tiny_codec_dir}"')
    # Two keys that only bound the amount of work are lowered for speed: one optimizer step per
    # experiment, and 40 new tokens (10 frames) per eval sentence instead of 1200.
    _replace_once(config / "inference_config.yaml", "max_new_tokens: 1200", "max_new_tokens: 40")
    experiments = (config / "experiments.yaml").read_text(encoding="utf-8")
    with_one_step, count = re.subn(r"^( *)trainer_args:\n", r"\1trainer_args:\n\1  max_steps: 1\n", experiments,
                                   flags=re.MULTILINE)
    assert count == len(yaml.load(experiments, ConfigLoader)["experiments"])
    (config / "experiments.yaml").write_text(with_one_step, encoding="utf-8")
    return root


@pytest.mark.slow
def test_shipped_config_folder_runs_check_data_train_and_eval(shipped_project, monkeypatch, capsys):
    """`make test-config`, `make data`, `make train`, `make eval` on config/ as shipped."""
    monkeypatch.chdir(shipped_project)
    assert main(["check-config", "--config-dir", "config"]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out and "All configuration files in config/ are valid." in out

    configs = load_configs("config")
    trainer_args = configs.experiments.experiments[0].trainer_args
    assert trainer_args["learning_rate"] == 5e-5 and type(trainer_args["learning_rate"]) is float

    assert main(["data", "--config-dir", "config"]) == 0
    assert "alice" in capsys.readouterr().out

    assert main(["train", "--config-dir", "config"]) == 0
    out = capsys.readouterr().out
    for experiment in configs.experiments.experiments:
        folder = Path("checkpoints") / experiment.model_id
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["global_step"] == 1
        # bf16: true as shipped: kept where this CPU computes in bfloat16, else fp32 with a note
        if metrics["precision"] == "fp32":
            assert any(note.startswith("bf16: this CPU has no native bfloat16") for note in metrics["notes"])
            assert "bf16: this CPU has no native bfloat16" in out
        else:
            assert metrics["precision"] == "bf16"
        recorded = yaml.safe_load((folder / "experiment.yaml").read_text())
        assert recorded["experiment"]["trainer_args"]["learning_rate"] == 5e-5

    assert main(["eval", "--config-dir", "config"]) == 0
    with open(Path("audio_samples") / "eval_results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    models = ["base", *(e.model_id for e in configs.experiments.experiments)]
    assert sorted((r["experiment_id"], r["sentence_id"]) for r in rows) == sorted(
        (m, s.sentence_id) for m in models for s in configs.eval_set.sentences)
    assert all((Path("audio_samples") / r["audio"]).is_file() for r in rows)
    assert (Path("report") / "index.html").is_file()


# --- YAML examples in the docs ----------------------------------------------------------------

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# The line before every ```yaml block names the config file it belongs to and, for a fragment,
# the key path it sits under: <!-- config: experiments.yaml experiments[0] -->. The block is
# merged into the shipped file at that place and the result validated as that file.
CONFIG_COMMENT = re.compile(r"^<!-- config: (?P<file>\S+\.yaml)(?: (?P<at>\S+))? -->$")


def _yaml_blocks() -> list[tuple[str, str, str, str]]:
    """(where, file, key path, text) of every ```yaml block in README.md and docs/*.md."""
    blocks = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        starts = [i for i, line in enumerate(lines) if line.strip() == "```yaml"]
        for start in starts:
            end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```")
            where = f"{doc.relative_to(REPO_ROOT)}:{start + 1}"
            comment = CONFIG_COMMENT.match(lines[start - 1].strip()) if start else None
            blocks.append((where, comment and comment["file"], comment and (comment["at"] or ""),
                           "\n".join(lines[start + 1:end])))
    return blocks


def _merge(base, fragment):
    if isinstance(base, dict) and isinstance(fragment, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in fragment.items()}}
    return fragment


def _put(data, at: str, fragment):
    """``fragment`` merged into ``data`` at a key path such as `experiments[0]` or `generation`."""
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", at)]
    if not parts:
        return _merge(data, fragment)
    copy = list(data) if isinstance(data, list) else dict(data)
    copy[parts[0]] = _put(copy[parts[0]], ".".join(map(str, parts[1:])), fragment)
    return copy


@pytest.mark.parametrize("where,name,at,body", _yaml_blocks(), ids=[b[0] for b in _yaml_blocks()])
def test_every_yaml_example_of_the_docs_validates_as_its_file(where, name, at, body):
    assert name in KINDS, f"{where}: the line before a ```yaml block must be <!-- config: <file>.yaml [key.path] -->"
    fragment = yaml.load(textwrap.dedent(body), ConfigLoader)
    shipped = yaml.load((SHIPPED / name).read_text(encoding="utf-8"), ConfigLoader)
    try:
        parse_config(KINDS[name], _put(shipped, at, fragment), f"{where} ({name} {at})")
    except ConfigError as exc:
        pytest.fail("\n".join(exc.problems))


def test_a_docs_example_that_breaks_the_schema_fails_the_check():
    """The check above can fail: the same fragment with a misspelt key is refused."""
    shipped = yaml.load((SHIPPED / "experiments.yaml").read_text(encoding="utf-8"), ConfigLoader)
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.training\.pakcing: unknown key"):
        parse_config("experiments", _put(shipped, "experiments[0]", {"training": {"pakcing": True}}), "doc")


# --- the reference pipeline's README layouts --------------------------------------------------

LAYOUTS = {
    # layout folder: what it must show once loaded
    "single_speaker": lambda c: [e.speaker_id for e in c.dataset.hf_datasets] == ["maya"],
    "multi_speaker": lambda c: len({e.speaker_id for e in c.dataset.hf_datasets}) == len(c.dataset.hf_datasets) >= 3,
    "categorical_filter": lambda c: all(e.categorical_filter is not None for e in c.dataset.hf_datasets),
    "experiment_grid": lambda c: len(c.experiments.experiments) == 3 and all(
        type(e.trainer_args["learning_rate"]) is float for e in c.experiments.experiments),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reference_readme_layouts_validate(layout, tmp_path):
    """Each layout folder holds the files it is about; the reference set above it supplies the rest."""
    folder = REFERENCE / layout
    own = sorted(p.name for p in folder.glob("*.yaml"))
    assert own and set(own) <= set(KINDS)
    for name in CONFIG_FILES.values():
        shutil.copy(folder / name if name in own else REFERENCE / name, tmp_path / name)
    report = check_config_dir(tmp_path)
    assert report.errors == []
    # only the notes on reference-era keys: warmup_ratio translated, model_name and num_proc unused
    reference_era = ("trainer_args.warmup_ratio -> ", "codec.model_name (", "processing.num_proc is ignored")
    assert not [w for w in report.warnings if not any(note in w for note in reference_era)]
    assert LAYOUTS[layout](load_configs(tmp_path))
