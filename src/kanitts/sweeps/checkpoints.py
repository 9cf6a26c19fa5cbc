"""Disk: only the best ``keep_top_k`` finished trials of a study keep their checkpoints.

A trial that failed after its training saved a checkpoint (its eval-set scoring raised) or was
pruned never gets a value, so it can never be among the best: its checkpoint goes too, unless
the trial is to be retried. A retried trial is a copy of the failed one (same model_id, same
checkpoint path, see :func:`kanitts.sweeps.study.retry_callback`) whose training resumes from
what the failed one left, so a folder stays while any trial that may still train or score it
(waiting, running, or failed and not yet queued again) names it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHECKPOINT_ATTR = "checkpoint"
# Set on a trial whose failure the sweep reported itself (a config mistake, a training or scoring
# error): such a trial is never retried. A trial failed without it was interrupted or killed.
ERROR_ATTR = "error"


def keep_best_checkpoints(study: Any, keep_top_k: int, objective: str, max_retries: int) -> list[str]:
    """Deletes the checkpoints of trials that cannot be among the best ``keep_top_k``; says what went.

    Run after every trial, so a checkpoint goes as soon as ``keep_top_k`` better ones exist, or
    as soon as its trial failed for good. ``max_retries`` is the retry callback's limit: a trial
    failed without an error is queued again until its retry history is that long. Another process
    of the same study may delete the same folder at the same time: a folder already gone is not
    an error.
    """
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}

    def may_resume(trial) -> bool:
        if trial.state in (TrialState.WAITING, TrialState.RUNNING):
            return True
        return (trial.state == TrialState.FAIL and ERROR_ATTR not in trial.user_attrs
                and trial.number not in retried
                and len(trial.system_attrs.get("retry_history", [])) < max_retries)

    finished = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and t.user_attrs.get(CHECKPOINT_ATTR)]
    best_first = sorted(finished, key=lambda t: t.value, reverse=study.direction == StudyDirection.MAXIMIZE)
    kept = best_first[:keep_top_k] + [t for t in trials if may_resume(t)]
    kept_folders = {Path(t.user_attrs[CHECKPOINT_ATTR]) for t in kept if t.user_attrs.get(CHECKPOINT_ATTR)}
    kept_models = {t.user_attrs.get("model_id") for t in kept} - {None}
    # a retried trial's copy names the same folder and decides its fate
    gone_for_good = [t for t in trials if t.state in (TrialState.FAIL, TrialState.PRUNED)
                     and t.user_attrs.get(CHECKPOINT_ATTR) and not may_resume(t) and t.number not in retried]

    deleted = []
    for trial in best_first[keep_top_k:] + gone_for_good:
        folder = Path(trial.user_attrs[CHECKPOINT_ATTR])
        if folder in kept_folders or trial.user_attrs.get("model_id") in kept_models or not folder.is_dir():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if trial.state == TrialState.COMPLETE:
            why = f"{objective} {trial.value:.4f}: not among the best {keep_top_k}"
        elif trial.state == TrialState.PRUNED:
            why = "pruned: it has no value to be among the best"
        else:
            error = trial.user_attrs.get(ERROR_ATTR, f"interrupted, and retried {max_retries} times")
            why = f"failed ({error}): it has no value to be among the best"
        deleted.append(f"deleted {folder} (trial {trial.number}, {why})")
    return deleted
