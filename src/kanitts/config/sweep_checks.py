"""An experiment's `sweep:` section against the shapes a search space may take and the installed libraries.

Run on the raw YAML data (like :func:`kanitts.config.library_checks.check_experiments`, which
calls it), so every problem names its exact key path, `experiments[0].sweep.parameters.lora_args.r.low`,
and is reported with the file's other problems. A varied key must be a field of the section it
names (`trainer_args.*` of TrainingArguments, `lora_args.*` of LoraConfig, `training.*` of this
project's training options), and every value a sweep may give it is checked the way the key
itself would be, so a trial never fails on a value check-config could have caught.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from kanitts.config.formatting import suggest
from kanitts.config.library_checks import (
    coerce_library_args,
    lora_config_types,
    training_argument_types,
)
from kanitts.config.schemas.experiments import LoraArgs, TrainingOptions
from kanitts.config.schemas.sweep import EVAL_SET_OBJECTIVES, SWEEP_SECTIONS, point_model_id

_RANGE_KEYS = ("low", "high", "log", "step")
_SPACE_KEYS = (*_RANGE_KEYS, "choices")
# What the validation pass logs (kanitts.training.validation), the objectives a trial can be scored on.
OBJECTIVE_PATTERN = re.compile(r"eval_(loss|audio_(loss|accuracy)|codebook([1-9][0-9]*)_(loss|accuracy))")
_OBJECTIVES = ["eval_loss", "eval_audio_loss", "eval_audio_accuracy", *EVAL_SET_OBJECTIVES,
               *(f"eval_codebook{k}_{m}" for k in range(1, 9) for m in ("loss", "accuracy"))]
# TrainingArguments the runner sets for every run (kanitts.training.arguments): a sweep's value
# for one of them would be dropped without a word.
RUNNER_SET_ARGS = {
    "output_dir": "every trial writes to checkpoints/.runs/<its model_id>",
    "run_name": "every trial's run is named after its model_id",
    "report_to": "the tracker is chosen once for the whole sweep",
    "remove_unused_columns": "the collator needs every column",
}


def check_sweeps(raw: Any) -> tuple[Any, list[str]]:
    """Every experiment's sweep in experiments.yaml's raw data: (data with values converted, problems).

    Also refuses a grid trial's model_id that another experiment already uses.
    """
    experiments = raw.get("experiments") if isinstance(raw, dict) else None
    if not isinstance(experiments, list):
        return raw, []
    problems: list[str] = []
    taken = {
        str(e["base"]["model_id"]).lower(): i for i, e in enumerate(experiments)
        if isinstance(e, dict) and isinstance(e.get("base"), dict) and e["base"].get("model_id") is not None
    }
    checked = []
    for i, exp in enumerate(experiments):
        if isinstance(exp, dict) and isinstance(exp.get("sweep"), dict):
            base = exp.get("base")
            model_id = base.get("model_id") if isinstance(base, dict) else None
            sweep, wrong, names = check_sweep(f"experiments[{i}]", exp["sweep"], model_id)
            problems.extend(wrong)
            for name in names:
                if taken.get(name.lower(), i) != i:
                    problems.append(
                        f"experiments[{i}].sweep: its grid trial {name!r} has the model_id of "
                        f"experiments[{taken[name.lower()]}]"
                    )
            exp = {**exp, "sweep": sweep}
        checked.append(exp)
    return {**raw, "experiments": checked}, problems


def check_sweep(where: str, sweep: dict[str, Any], model_id: Any) -> tuple[dict[str, Any], list[str], list[str]]:
    """(the sweep with its values converted as the libraries take them, problems, grid model_ids).

    ``where`` is the experiment's key path (`experiments[0]`); problems are `key.path: problem`.
    """
    where = f"{where}.sweep"
    problems: list[str] = []
    method = sweep.get("method")
    parameters = sweep.get("parameters")
    objective = sweep.get("objective")
    if isinstance(objective, str) and not OBJECTIVE_PATTERN.fullmatch(objective) and (
            objective not in EVAL_SET_OBJECTIVES):
        # caught here, not after a whole trial has trained without the metric to score it on
        problems.append(
            f"{where}.objective: {objective!r} is not a metric the validation pass logs (eval_loss, "
            f"eval_audio_loss, eval_audio_accuracy, eval_codebook<k>_loss, eval_codebook<k>_accuracy) nor "
            f"a score of the eval set ({', '.join(EVAL_SET_OBJECTIVES)}){suggest(objective, _OBJECTIVES)}"
        )
    elif objective in EVAL_SET_OBJECTIVES and sweep.get("pruner") == "median":
        direction = sweep.get("direction") or EVAL_SET_OBJECTIVES[objective]
        if direction == "maximize":
            problems.append(
                f"{where}.pruner: the median pruner compares the validation loss, which falls as a trial "
                f"gets better, and {objective} is maximized: it would stop the best trials; set pruner: none"
            )
    if not isinstance(parameters, dict):
        return sweep, problems, []  # the schema reports a missing or misshapen mapping
    if not parameters:
        problems.append(f"{where}.parameters: empty: name at least one key to vary (e.g. lora_args.r: [8, 16])")
        return sweep, problems, []
    checked = {}
    for key, space in parameters.items():
        here = f"{where}.parameters.{key}"
        field_problem = _field_problem(str(key))
        if field_problem:
            problems.append(f"{here}: {field_problem}")
            checked[key] = space
            continue
        if method == "grid" or isinstance(space, list):
            checked[key], wrong = _check_values(str(key), here, space)
        elif method == "optuna":
            checked[key], wrong = _check_space(str(key), here, space)
        else:
            checked[key], wrong = space, []  # the schema reports the method
        problems.extend(wrong)
    names: list[str] = []
    if method == "grid" and not problems and isinstance(model_id, str):
        points = [{}]
        for key, values in checked.items():
            points = [{**point, key: value} for point in points for value in values]
        names = [point_model_id(model_id, point) for point in points]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            problems.append(f"{where}.parameters: the grid names two trials {twice[0]!r}: give distinct values")
    return {**sweep, "parameters": checked}, problems, names


def _field_problem(key: str) -> str:
    """Why ``key`` (`section.field`) is not a key a sweep can vary, or ''."""
    section, _, name = key.partition(".")
    if section not in SWEEP_SECTIONS or not name:
        return (
            f"not a key a sweep can vary: write it as section.field, the section one of "
            f"{', '.join(SWEEP_SECTIONS)}{suggest(section, list(SWEEP_SECTIONS)) if name else ''}"
        )
    if section == "trainer_args" and name in RUNNER_SET_ARGS:
        return f"set by the runner, not by a sweep ({RUNNER_SET_ARGS[name]})"
    fields = _section_fields(section)
    if name not in fields:
        library = {"trainer_args": "a TrainingArguments field of the installed transformers",
                   "lora_args": "a LoraConfig field of the installed peft",
                   "training": "a training option"}[section]
        return f"not {library}{suggest(name, sorted(fields))}"
    return ""


def _section_fields(section: str) -> dict[str, Any]:
    if section == "trainer_args":
        return training_argument_types()
    if section == "lora_args":
        return lora_config_types()
    return dict(TrainingOptions.model_fields)


def _check_value(key: str, value: Any) -> tuple[Any, str]:
    """``value`` converted as ``key``'s field takes it, and the problem ('' when none)."""
    section, _, name = key.partition(".")
    own = {"lora_args": LoraArgs, "training": TrainingOptions}.get(section)
    if own is not None and name in own.model_fields:
        # This project's own typing of the field (ranges, choices) decides.
        info = own.model_fields[name]
        annotated = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        try:
            return TypeAdapter(annotated).validate_python(value), ""
        except ValidationError as exc:
            return value, f"{exc.errors()[0]['msg'].lower()}, got {value!r}"
    declared = _section_fields(section)
    converted, problems = coerce_library_args({name: value}, {name: declared[name]})
    return converted[name], problems.get(name, "")


def _check_values(key: str, here: str, values: Any) -> tuple[Any, list[str]]:
    """A list of values (a grid, or Optuna choices): non-empty, each one valid for the field."""
    if not isinstance(values, list):
        return values, [f"{here}: expected a list of values to try, got {values!r}"]
    if not values:
        return values, [f"{here}: empty: give at least one value"]
    out, problems = [], []
    for i, value in enumerate(values):
        converted, problem = _check_value(key, value)
        out.append(converted)
        if problem:
            problems.append(f"{here}[{i}]: {problem}")
    return out, problems


def _check_space(key: str, here: str, space: Any) -> tuple[Any, list[str]]:
    """An Optuna search space: `{low, high[, log][, step]}` for numbers, `{choices: [...]}`."""
    if not isinstance(space, dict):
        return space, [f"{here}: expected {{low, high}} (numbers), {{choices: [...]}} or a list, got {space!r}"]
    problems = [
        f"{here}.{k}: unknown key in a search space{suggest(str(k), list(_SPACE_KEYS))} "
        f"(it takes {', '.join(_SPACE_KEYS)})"
        for k in space if k not in _SPACE_KEYS
    ]
    if "choices" in space:
        if any(k in space for k in _RANGE_KEYS):
            problems.append(f"{here}: choices and low/high are both set: a space is one or the other")
        choices, wrong = _check_values(key, f"{here}.choices", space["choices"])
        return {**space, "choices": choices}, problems + wrong
    missing = [k for k in ("low", "high") if k not in space]
    if missing:
        return space, [*problems, f"{here}: missing {' and '.join(missing)} (or give choices: [...])"]
    out = dict(space)
    for bound in ("low", "high"):
        value = space[bound]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{here}.{bound}: expected a finite number, got {value!r}")
            continue
        out[bound], problem = _check_value(key, value)
        if problem:
            problems.append(f"{here}.{bound}: {problem}")
    if problems:
        return out, problems
    low, high = out["low"], out["high"]
    if low >= high:
        problems.append(f"{here}: low ({low}) must be below high ({high})")
    log, step = space.get("log", False), space.get("step")
    if not isinstance(log, bool):
        problems.append(f"{here}.log: expected true or false, got {log!r}")
    elif log and low <= 0:
        problems.append(f"{here}.log: a log scale needs low above 0, got {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or math.isnan(step):
            problems.append(f"{here}.step: expected a number above 0, got {step!r}")
        elif log:
            problems.append(f"{here}.step: a log scale takes no step (Optuna samples it continuously)")
        elif isinstance(low, int) and not float(step).is_integer():
            problems.append(f"{here}.step: {key} takes integers: the step must be one, got {step!r}")
    return out, problems
