"""`kanitts eval`: run every model on the eval set, then build the report, then upload.

The order keeps what is done: the results are on disk before the report is built, and the
report is written before the Hub is asked, so a Hub that says no costs nothing local (the
failure is reported in the summary and the exit code).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kanitts.config import CONFIG_FILES, ConfigSet, load_config, load_configs
from kanitts.errors import ConfigError, UserError
from kanitts.evaluation.results import RANKING_CSV
from kanitts.evaluation.runner import EvalSummary, run_eval
from kanitts.hub import upload_eval_dataset
from kanitts.inference import KaniTTS
from kanitts.recipes import report as report_recipe

KINDS = ("experiments", "eval", "eval_set", "model", "inference")


def evaluate(
    configs: ConfigSet,
    *,
    force: bool = False,
    only: list[str] | None = None,
    device: str | None = None,
    report: bool = True,
    load_model: Callable[..., KaniTTS] = KaniTTS.from_pretrained,
) -> EvalSummary:
    """Run -> report -> upload on loaded configs; the summary says what each step gave."""
    started = time.perf_counter()
    eval_cfg = configs.eval
    if report:  # refused before any model is loaded, not after an hour of generation
        report_recipe.check_report_dir(eval_cfg)
    summary = run_eval(configs, force=force, only=only, device=device, load_model=load_model)
    if report and summary.rows:
        summary.report_index = report_recipe.build(eval_cfg)
    if eval_cfg.huggingface.upload_dataset and summary.rows:
        try:
            summary.hub_url = upload_eval_dataset(summary.dataset_dir, eval_cfg.huggingface.repo_name,
                                                  private=eval_cfg.huggingface.private,
                                                  ranking_csv=summary.dataset_dir.parent / RANKING_CSV)
        except UserError as exc:
            summary.upload_error = str(exc)
    summary.seconds = time.perf_counter() - started
    return summary


def load_eval_configs(config_dir: Path | str) -> ConfigSet:
    """What eval needs, and dataset_config.yaml when there is one: its held-out rows give the
    speakers without configured references theirs. A dataset_config.yaml that does not validate
    is a warning (nothing else of eval needs it), not an error."""
    config_dir = Path(config_dir)
    configs = load_configs(config_dir, kinds=KINDS)
    path = config_dir / CONFIG_FILES["dataset"]
    if path.is_file():
        try:
            configs.dataset = load_config("dataset", config_dir)
        except ConfigError as exc:
            configs.warnings += [f"{p} (so no speaker references are taken from its held-out rows)"
                                 for p in exc.problems]
        else:
            configs.warnings += [f"{path}: {note}" for note in configs.dataset.notes]
    return configs


def run(*, config_dir: Path, force: bool = False, only: list[str] | None = None, device: str | None = None,
        report: bool = True) -> int:
    configs = load_eval_configs(config_dir)
    for line in configs.warnings:
        print(f"warning: {line}")
    summary = evaluate(configs, force=force, only=only, device=device, report=report)
    print(summary.describe())
    return 0 if summary.succeeded else 1
