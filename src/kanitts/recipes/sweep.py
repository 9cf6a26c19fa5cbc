"""`kanitts sweep`: run the studies of experiments.yaml's `sweep:` sections, then report them.

The trials table (values, objective, state, time), the best settings and where the report
folder is are printed for every study; the exit code is 0 when the studies ran (pruned and
failed trials are a study's business), 130 when interrupted, like `kanitts train`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from kanitts.config import load_configs
from kanitts.recipes.train import load_training_configs
from kanitts.sweeps import run_sweeps, write_report
from kanitts.sweeps.report import trials_table
from kanitts.sweeps.study import open_study
from kanitts.training.experiments import is_main_process, say


def run(
    config_dir: Path | str,
    *,
    only: Sequence[str] | None = None,
    n_trials: int | None = None,
    checkpoints_dir: Path | str | None = None,
) -> int:
    """Run (or resume) every sweep, or those of the experiments in ``only``; ``n_trials``
    replaces each study's target number of trials."""
    configs = load_training_configs(config_dir)
    if any(e.sweep is not None and e.sweep.scores_eval_set for e in configs.experiments.experiments):
        # an eval-set objective: the trials speak the eval set as `kanitts eval` has them speak it
        said = set(configs.warnings)
        configs = load_configs(config_dir, kinds=("dataset", "experiments", "model", "eval", "eval_set", "inference"))
        for warning in configs.warnings:
            if warning not in said:
                say(f"warning: {warning}")
    outcomes = run_sweeps(configs, only=only, n_trials=n_trials, checkpoints_dir=checkpoints_dir)
    if is_main_process():
        from rich.console import Console

        # piped or logged, the table keeps its columns instead of folding to 80 characters
        console = Console() if sys.stdout.isatty() else Console(width=160)
        experiments = {e.sweep.study_label(e.model_id): e for e in configs.experiments.experiments if e.sweep}
        listening_report = Path(configs.eval.paths.report_dir) / "index.html" if configs.eval else None
        for outcome in outcomes:
            sweep = experiments[outcome.name].sweep
            report = write_report(open_study(sweep, outcome.name, outcome.storage), sweep.objective, outcome.report_dir,
                                  listening_report)
            console.print(trials_table(report))
            if report.best:
                settings = ", ".join(f"{k}={v}" for k, v in report.best["params"].items())
                say(f"best: trial {report.best['trial']} ({report.best['model_id']}): "
                    f"{sweep.objective} {report.best[sweep.objective]:.4f} with {settings}")
            say(f"report: {report.folder / 'index.html'}; study: {outcome.storage} "
                f"(optuna-dashboard {outcome.storage} shows it live)")
    if any(o.interrupted for o in outcomes):
        say("Interrupted: run the same command again to resume the study.")
        return 130
    return 0
