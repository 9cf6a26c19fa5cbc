"""Loading config files into typed objects: one file (:func:`load_config`) or a folder's set
(:func:`load_configs` -> :class:`ConfigSet`).

Validation happens once, here, at the edge, and every problem is collected (not just the first)
before one ConfigError lists them all, so one run shows the user everything to fix. What is
worth saying but not an error (a key that does nothing here, a translated reference-era key)
goes to the one warnings channel, ``ConfigSet.warnings``, which every command prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kanitts.config.cross_checks import cross_file_problems, cross_file_warnings
from kanitts.config.formatting import validation_problems
from kanitts.config.library_checks import check_experiments
from kanitts.config.schemas import CONFIG_FILES, SCHEMAS
from kanitts.config.schemas.dataset import DatasetConfig
from kanitts.config.schemas.eval_set import EvalSetConfig
from kanitts.config.schemas.evaluation import EvalConfig
from kanitts.config.schemas.experiments import ExperimentsConfig
from kanitts.config.schemas.inference import InferenceConfig
from kanitts.config.schemas.model import ModelConfig, token_space_problems
from kanitts.config.sweep_checks import check_sweeps
from kanitts.config.yaml_loading import read_yaml
from kanitts.errors import ConfigError


def parse_config(kind: str, data: Any, filename: str) -> BaseModel:
    """Validate already-parsed YAML data against the schema of `kind` (see CONFIG_FILES).

    experiments.yaml is also checked against the installed transformers, peft and LFM2, and
    its pass-through values come back converted as those libraries take them.
    """
    schema = SCHEMAS[kind]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}: expected a mapping of keys at the top level, got {type(data).__name__}"])
    problems = []
    if kind == "experiments":
        data, library_problems = check_experiments(data)
        problems.extend(f"{filename}: {p}" for p in library_problems)
        data, sweep_problems = check_sweeps(data)
        problems.extend(f"{filename}: {p}" for p in sweep_problems)
    try:
        parsed = schema.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(filename, schema, exc))
    if problems:
        raise ConfigError(problems)
    return parsed


def load_config(kind: str, config_dir: Path | str = "config") -> BaseModel:
    """One file of `config_dir`, validated; its notes are on the object (``.notes``)."""
    path = Path(config_dir) / CONFIG_FILES[kind]
    return parse_config(kind, read_yaml(path), str(path))


@dataclass
class ConfigSet:
    """The configs one command needs, validated and cross-checked, and what to warn about them."""

    config_dir: Path
    dataset: DatasetConfig | None = None
    experiments: ExperimentsConfig | None = None
    eval: EvalConfig | None = None
    eval_set: EvalSetConfig | None = None
    model: ModelConfig | None = None
    inference: InferenceConfig | None = None
    warnings: list[str] = field(default_factory=list)


def load_configs(config_dir: Path | str = "config", kinds: tuple[str, ...] = tuple(CONFIG_FILES)) -> ConfigSet:
    """Load `kinds` from `config_dir`; raise one ConfigError listing every problem in all files.

    Schema errors, checks against the installed libraries and checks across files are all
    collected before anything is raised. Each file's notes and the cross-file warnings end up
    in ``warnings`` as `file: key.path: note`.
    """
    config_dir = Path(config_dir)
    configs = ConfigSet(config_dir=config_dir)
    problems: list[str] = []
    for kind in kinds:
        path = config_dir / CONFIG_FILES[kind]
        try:
            parsed = parse_config(kind, read_yaml(path), str(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if kind == "model":
            problems.extend(f"{path}: {p}" for p in token_space_problems(parsed))
        configs.warnings.extend(f"{path}: {note}" for note in parsed.notes)
        setattr(configs, kind, parsed)
    problems.extend(cross_file_problems(configs))
    configs.warnings.extend(cross_file_warnings(configs))
    if problems:
        raise ConfigError(problems)
    return configs
