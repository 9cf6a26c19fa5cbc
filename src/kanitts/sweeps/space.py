"""A trial's values: each varied key's value as Optuna suggests it (`section.field` -> value).

Optuna's categorical choices are text, numbers, true/false or null; a choice that is a list (a
`target_modules` to try) travels as its JSON text, shown so in the trials table, and is
decoded here.
"""

from __future__ import annotations

import json
from typing import Any

from kanitts.config import Sweep


def _encoded(values: list[Any]) -> list[Any]:
    if any(isinstance(v, (list, dict)) for v in values):
        return [json.dumps(v) for v in values]
    return list(values)


def _decoded(value: Any, values: list[Any]) -> Any:
    if any(isinstance(v, (list, dict)) for v in values):
        return json.loads(value)
    return value


def choices_of(space: Any) -> list[Any] | None:
    """The values of a categorical space (a list, or `{choices}`), else None."""
    if isinstance(space, list):
        return space
    if isinstance(space, dict) and "choices" in space:
        return space["choices"]
    return None


def grid_search_space(sweep: Sweep) -> dict[str, list[Any]]:
    """GridSampler's search space: every key's values as Optuna stores them."""
    return {key: _encoded(values) for key, values in sweep.parameters.items()}


def suggest_parameters(trial: Any, sweep: Sweep) -> dict[str, Any]:
    """The trial's value of every varied key (a retried trial gets its earlier values back)."""
    params: dict[str, Any] = {}
    for key, space in sweep.parameters.items():
        choices = choices_of(space)
        if choices is not None:
            params[key] = _decoded(trial.suggest_categorical(key, _encoded(choices)), choices)
            continue
        low, high, log, step = space["low"], space["high"], bool(space.get("log", False)), space.get("step")
        if isinstance(low, int) and isinstance(high, int) and (step is None or float(step).is_integer()):
            params[key] = trial.suggest_int(key, low, high, step=int(step or 1), log=log)
        else:
            params[key] = trial.suggest_float(key, float(low), float(high), step=step, log=log)
    return params
