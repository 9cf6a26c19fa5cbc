"""An experiment's `sweep:` section: which keys to vary, how, and where the study is kept.

The shape of each search space (a list for grid, `{low, high, log, step}` or `{choices}` for
Optuna) and whether its keys are fields of the installed libraries are checked on the raw YAML
(:mod:`kanitts.config.sweep_checks`), where each problem gets its exact key path; this schema
holds the result.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from kanitts.config.schemas.base import Strict, Text

# The sections of an experiment whose keys a sweep may vary.
SWEEP_SECTIONS = ("lora_args", "trainer_args", "training")


class Sweep(Strict):
    method: Literal["grid", "optuna"]
    # "section.key" -> a list of values (grid), or {low, high[, log][, step]} / {choices} (optuna)
    parameters: dict[Text, Any] = Field(min_length=1)
    # Optuna: how many trials the study should hold in the end (finished or pruned); a grid runs every point.
    n_trials: PositiveInt = 10
    # An eval metric of the trained model, best over its evaluations (eval_loss: the lowest).
    objective: Text = "eval_loss"
    direction: Literal["minimize", "maximize"] | None = None  # default: maximize an accuracy, else minimize
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "none"] = "median"
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
    def resolved_direction(self) -> str:
        if self.direction is not None:
            return self.direction
        return "maximize" if self.objective.endswith("accuracy") else "minimize"
