"""An experiment's `sweep:` section: which keys to vary, how, and where the study is kept.

The shape of each search space (a list for grid, `{low, high, log, step}` or `{choices}` for
Optuna) and whether its keys are fields of the installed libraries are checked on the raw YAML
(:mod:`kanitts.config.sweep_checks`), where each problem gets its exact key path; this schema
holds the result.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import NonNegativeInt, PositiveInt

from kanitts.config.schemas.base import Strict, Text

# The sections of an experiment whose keys a sweep may vary.
SWEEP_SECTIONS = ("lora_args", "trainer_args", "training")
# Objectives scored on the trained model speaking the eval set (eval_set.yaml), as `kanitts eval`
# scores each sample, the mean over the samples; and the direction that is better.
EVAL_SET_OBJECTIVES = {"wer": "minimize", "cer": "minimize", "speaker_similarity": "maximize", "mos": "maximize"}
# Where studies and their reports live by default (relative to where the command runs); here,
# not in kanitts.sweeps, so the listening report finds the sweep reports without the training stack.
SWEEPS_FOLDER = "sweeps"


class Sweep(Strict):
    method: Literal["grid", "optuna"]
    # "section.key" -> a list of values (grid), or {low, high[, log][, step]} / {choices} (optuna)
    parameters: dict[Text, Any]
    # Optuna: how many trials the study should hold in the end (finished or pruned); a grid runs every point.
    n_trials: PositiveInt = 10
    # A metric of the validation pass, best over the trial's evaluations (eval_loss: the lowest), or
    # one of EVAL_SET_OBJECTIVES: the trained model speaks the eval set and is scored as `kanitts eval` does.
    objective: Text = "eval_loss"
    direction: Literal["minimize", "maximize"] | None = None  # default: maximize an accuracy or a similarity
    sampler: Literal["tpe", "random"] = "tpe"
    # default: median for optuna (fed the validation loss), none for a grid and for an eval-set
    # objective that is maximized (a falling loss would look like a worse trial)
    pruner: Literal["median", "none"] | None = None
    # Trials finished before the median pruner prunes anyone, and evaluations of a trial before it may be pruned.
    pruner_startup_trials: NonNegativeInt = 2
    pruner_warmup_evaluations: NonNegativeInt = 1
    seed: NonNegativeInt = 42
    study_name: Text | None = None  # default: the experiment's model_id
    # A file (SQLite) relative to where you run, or an RDB URL (postgresql://..., mysql://...).
    storage: Text | None = None  # default: sweeps/<study_name>.db
    keep_top_k: NonNegativeInt = 3
    # Optuna's heartbeat: a trial silent this long (a killed machine) is marked failed and retried.
    heartbeat_seconds: PositiveInt = 60

    @property
    def scores_eval_set(self) -> bool:
        return self.objective in EVAL_SET_OBJECTIVES

    @property
    def pruning_metric(self) -> str:
        """The metric of the validation pass the pruner compares at each evaluation."""
        return "eval_loss" if self.scores_eval_set else self.objective

    @property
    def resolved_pruner(self) -> str:
        if self.pruner is not None:
            return self.pruner
        if self.method != "optuna" or (self.scores_eval_set and self.resolved_direction == "maximize"):
            return "none"
        return "median"

    @property
    def resolved_direction(self) -> str:
        if self.direction is not None:
            return self.direction
        if self.objective in EVAL_SET_OBJECTIVES:
            return EVAL_SET_OBJECTIVES[self.objective]
        return "maximize" if self.objective.endswith("accuracy") else "minimize"

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of a grid's values, the first key varying slowest (file order)."""
        points: list[dict[str, Any]] = [{}]
        for key, values in self.parameters.items():
            points = [{**point, key: value} for point in points for value in values]
        return points

    def study_label(self, model_id: str) -> str:
        return self.study_name or model_id


# How a trial's model_id names a varied key: short names for the keys swept most often.
_SHORT_NAMES = {
    "learning_rate": "lr",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "num_train_epochs": "ep",
    "per_device_train_batch_size": "bs",
    "gradient_accumulation_steps": "ga",
    "weight_decay": "wd",
    "warmup_steps": "warmup",
    "max_steps": "steps",
    "lr_scheduler_type": "sched",
    "max_tokens_per_batch": "tokens",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def point_model_id(model_id: str, params: dict[str, Any]) -> str:
    """A readable model_id for one combination: `alice` + {lora_args.r: 16, lr: 5e-5} -> `alice-r16-lr5e-05`."""
    parts = [model_id]
    for key, value in params.items():
        name = _SHORT_NAMES.get(key.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            text = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value).lower()
            parts.append(f"{name}-{text}")
        else:
            parts.append(f"{name}{value:g}" if isinstance(value, float) else f"{name}{value}")
    return _UNSAFE.sub("_", "-".join(parts))[:200]
