"""The bridge from the Trainer's evaluations to an Optuna trial: report, and stop when pruned."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class TrialPruning(TrainerCallback):
    """Reports ``metric`` at every evaluation to ``trial``; stops training when the pruner says so.

    A pruned run stops at once and sets :attr:`discard_run`, which tells the training run to
    save nothing (:class:`kanitts.training.experiments.TrainingRun`). The first
    ``warmup_evaluations`` evaluations never prune (a trial's first numbers say little), nor does
    the evaluation after the last step: the model is trained by then.
    """

    def __init__(self, trial: Any, metric: str, warmup_evaluations: int = 0):
        self.trial = trial
        self.metric = metric
        self.warmup_evaluations = warmup_evaluations
        self.discard_run: str | None = None
        self.reported: list[tuple[int, float]] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), step=state.global_step)
        self.reported.append((state.global_step, float(value)))
        warm = len(self.reported) > self.warmup_evaluations
        if warm and state.global_step < state.max_steps and self.trial.should_prune():
            self.discard_run = f"pruned at step {state.global_step}: {self.metric} {value:.4f}"
            control.should_training_stop = True
            control.should_save = False
