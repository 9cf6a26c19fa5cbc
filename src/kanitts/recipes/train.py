"""`kanitts train`: load the configs once, run the experiments, print the summary, the exit code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kanitts.config import CONFIG_FILES, ConfigSet, load_configs
from kanitts.training.experiments import ExperimentResult, is_main_process, run_experiments, say


def run(
    config_dir: Path | str,
    *,
    only: Sequence[str] | None = None,
    force: bool = False,
    checkpoints_dir: Path | str | None = None,
) -> int:
    """Train every experiment of experiments.yaml (or those in ``only``) into ``checkpoints_dir``.

    ``checkpoints_dir`` defaults to eval_config.yaml's ``paths.checkpoints_dir`` when that file
    exists, else ./checkpoints.
    """
    from rich.console import Console

    configs = load_training_configs(config_dir)
    results = run_experiments(configs, only=only, force=force, checkpoints_dir=checkpoints_dir)
    if is_main_process():
        Console().print(summary_table(results))
    code = exit_code(results)
    if code == 130:
        say("Interrupted: run the same command again to resume from the last checkpoint.")
    return code


def summary_table(results: Sequence[ExperimentResult]):
    """A rich table: experiment, status, time, final training loss, validation loss, path.

    The validation loss is the saved model's (the best evaluation's under load_best_model_at_end).
    """
    from rich.table import Table

    colours = {"done": "green", "skipped": "cyan", "failed": "red", "interrupted": "yellow", "not run": "dim",
               "pruned": "yellow"}
    table = Table(title="Training summary")
    for column in ("experiment", "status", "time", "final loss", "eval loss", "path"):
        table.add_column(column)
    for r in results:
        minutes, seconds = divmod(int(round(r.seconds)), 60)
        table.add_row(
            r.model_id,
            f"[{colours[r.status]}]{r.status}[/]",
            f"{minutes}m{seconds:02d}s" if r.seconds else "-",
            f"{r.final_loss:.4f}" if r.final_loss is not None else "-",
            f"{r.eval_loss:.4f}" if r.eval_loss is not None else "-",
            str(r.path) if r.path else "-",
        )
    return table


def exit_code(results: Sequence[ExperimentResult]) -> int:
    """0 when nothing failed; 130 when interrupted (like a shell), 1 when an experiment failed."""
    if any(r.status == "interrupted" for r in results):
        return 130
    return 1 if any(r.status == "failed" for r in results) else 0


def load_training_configs(config_dir: Path | str) -> ConfigSet:
    """The configs training reads (eval_config.yaml too when present, for its checkpoints_dir),
    with their warnings said once."""
    kinds = ("dataset", "experiments", "model")
    if (Path(config_dir) / CONFIG_FILES["eval"]).is_file():
        kinds += ("eval",)
    configs = load_configs(config_dir, kinds=kinds)
    for warning in configs.warnings:
        say(f"warning: {warning}")
    return configs
