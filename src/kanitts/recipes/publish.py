"""`kanitts upload-model`: publish one checkpoint with a model card built from the project.

The card names the training datasets (dataset_config.yaml), the codec (model_config.yaml) and
the eval results (eval_config.yaml's ``audio_output_dir``); each file is read once. Only
eval_config.yaml is required, since it says where the checkpoints are: without the others the
card says less (a broken one is named in a warning, not silently skipped).
"""

from __future__ import annotations

import sys
from pathlib import Path

from kanitts.config import CONFIG_FILES, load_config
from kanitts.errors import ConfigError, UserError
from kanitts.evaluation.results import RESULTS_JSON, read_results
from kanitts.hub import upload_model


def _optional(kind: str, config_dir: Path, without: str):
    """The config of ``kind``, or None when it is missing or invalid (then a warning says so)."""
    if not (config_dir / CONFIG_FILES[kind]).is_file():
        return None
    try:
        return load_config(kind, config_dir)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"warning: {problem} (the model card is written {without})", file=sys.stderr)
        return None


def run(*, config_dir: Path, model_id: str, repo: str, private: bool = False) -> int:
    if not model_id.strip():
        raise UserError("name the checkpoint to upload: --model-id <model_id from experiments.yaml>")
    config_dir = Path(config_dir)
    eval_cfg = load_config("eval", config_dir)
    dataset_cfg = _optional("dataset", config_dir, "without the training datasets")
    model_cfg = _optional("model", config_dir, "with the default codec")
    results = Path(eval_cfg.paths.audio_output_dir) / RESULTS_JSON
    evaluated = read_results(results) if results.is_file() else {}
    url = upload_model(
        Path(eval_cfg.paths.checkpoints_dir) / model_id,
        repo,
        private=private,
        dataset_ids=[entry.reponame for entry in dataset_cfg.hf_datasets] if dataset_cfg else [],
        eval_rows=evaluated.get("rows", []),
        codec=model_cfg.codec if model_cfg else None,
        ranking=evaluated.get("ranking"),
        references=evaluated.get("references"),
    )
    print(f"uploaded {model_id} to {url}")
    return 0
