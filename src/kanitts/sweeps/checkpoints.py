"""Disk: only the best ``keep_top_k`` finished trials of a study keep their checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHECKPOINT_ATTR = "checkpoint"


def keep_best_checkpoints(study: Any, keep_top_k: int, objective: str) -> list[str]:
    """Deletes the checkpoints of finished trials outside the best ``keep_top_k``; says what went.

    Run after every trial, so a checkpoint goes as soon as ``keep_top_k`` better ones exist.
    Another process of the same study may delete the same folder at the same time: a folder
    already gone is not an error.
    """
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and t.user_attrs.get(CHECKPOINT_ATTR)]
    best_first = sorted(finished, key=lambda t: t.value, reverse=study.direction == StudyDirection.MAXIMIZE)
    deleted = []
    for trial in best_first[keep_top_k:]:
        folder = Path(trial.user_attrs[CHECKPOINT_ATTR])
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(
                f"deleted {folder} (trial {trial.number}, {objective} {trial.value:.4f}: "
                f"not among the best {keep_top_k})"
            )
    return deleted
