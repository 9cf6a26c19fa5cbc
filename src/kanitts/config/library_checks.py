"""experiments.yaml against the installed transformers, peft and LFM2.

``trainer_args`` and ``lora_args`` pass through to TrainingArguments and LoraConfig, so what
they accept is what the installed releases declare: field names, types and choices are read off
those classes (and LoRA target names off transformers' LFM2 class), never copied here, so a
new release's fields are known the day it is installed. Values come back converted as the
libraries take them (`5e-5` written as text is a float, an enum's text is checked against its
members), and reference-era TrainingArguments keys are translated with a note.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from functools import cache, lru_cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import TypeAdapter, ValidationError

from kanitts.config.formatting import QUOTE_BOOL_TEXT, suggest
from kanitts.config.schemas.base import Text
from kanitts.config.schemas.experiments import LoraArgs
from kanitts.config.yaml_loading import number_as_text

# numpy's seed range: transformers' set_seed hands the seed to np.random.seed.
_SEED = Annotated[int, annotated_types.Interval(ge=0, lt=2**32)]


def _declared_types(cls: type) -> dict[str, Any]:
    """Field name -> declared type of a library's config dataclass, read off the installed class."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation naming something only imported for type checkers
        hints = {}
    return {
        f.name: hints.get(f.name, Any if isinstance(f.type, str) else f.type)
        for f in dataclasses.fields(cls)
        if f.init
    }


def _is_enum(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, enum.Enum)


def accepted_type(declared: Any, seed: bool = False) -> Any:
    """The type a config value is checked against, for a field a library declares as ``declared``.

    Follows what the library does with the value, which its annotation alone does not say:
    an `Enum | str` field (`lr_scheduler_type`, `optim`, `task_type`) is turned into the enum,
    so only the enum's values are accepted; a text field keeps a YAML number's text; a config
    object (a dataclass) can only be written as a mapping; a Literal with a placeholder (peft's
    `pissa_niter_[number of iters]`) cannot be checked by listing and accepts any text; a seed
    is what numpy accepts.
    """
    origin, args = get_origin(declared), get_args(declared)
    if origin is Union or origin is types.UnionType:
        if str in args and any(_is_enum(a) for a in args):
            args = tuple(a for a in args if a is not str)
        return Union[tuple(accepted_type(a, seed) for a in args)]  # noqa: UP007 (members known at run time)
    if origin is Literal:
        return Text if any("[" in str(a) for a in args) else declared
    if origin in (list, tuple, set, frozenset, dict):
        return origin[tuple(accepted_type(a) for a in args)] if args else origin
    if declared is str:
        return Text
    if declared is int:
        return _SEED if seed else int
    if declared in (float, bool, type(None), list, dict, Ellipsis) or _is_enum(declared):
        return declared
    if dataclasses.is_dataclass(declared):
        return dict
    return Any


def _leaf_types(t: Any) -> list[Any]:
    """Every member type of a (nested) annotation; Literal members are their values."""
    args = get_args(t)
    if get_origin(t) is Literal:
        return list(args)
    if get_origin(t) is Annotated:
        return _leaf_types(args[0])
    if get_origin(t) is Union or get_origin(t) is types.UnionType:
        return [leaf for a in args for leaf in _leaf_types(a)]
    return [t]


def _describe_type(t: Any) -> str:
    """How a message names what a field takes: 'a number', 'one of: cosine, linear', ..."""
    origin, args = get_origin(t), get_args(t)
    if origin is Annotated:
        bounds = {k: getattr(m, k) for m in args[1:] for k in ("ge", "lt") if getattr(m, k, None) is not None}
        if args[0] is int and bounds.keys() == {"ge", "lt"}:
            return f"an integer from {bounds['ge']} to {bounds['lt'] - 1}"
        return _describe_type(args[0])
    if origin is Union or origin is types.UnionType:
        parts = list(dict.fromkeys(_describe_type(a) for a in args))
        return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"
    if origin is Literal or _is_enum(t):
        choices = args if origin is Literal else [member.value for member in t]
        return "one of: " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
    if t in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset):
        return "a list"
    if t is dict or origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}
    return names.get(t, "anything")


def _choices(t: Any) -> list[str]:
    """The text values an enum or Literal member of ``t`` allows, for did-you-mean."""
    found = []
    for leaf in _leaf_types(t):
        if isinstance(leaf, str):
            found.append(leaf)
        elif _is_enum(leaf):
            found.extend(str(member.value) for member in leaf)
    return found


@cache
def type_adapter(accepted: Any) -> TypeAdapter:
    return TypeAdapter(accepted)


def _plain(value: Any) -> Any:
    """Library-ready values: enum members as their text, YAML numbers as plain int / float."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def coerce_library_args(args: dict[str, Any], declared: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``args`` converted the way the library accepts them, and `{key: problem}` for the rest.

    ``declared`` maps field names to the types the library declares (:func:`_declared_types`).
    `num_train_epochs: 2` stays 2 where a float is declared, `max_steps: 1e3` becomes 1000 where
    an int is; text where a number is declared is converted when it reads as one (`"5e-5"`)
    and a problem when not (`fast`), as is true/false where neither is a bool. Keys the library
    does not declare are kept as they are: they are reported elsewhere, with suggestions.
    """
    out: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, value in args.items():
        if key not in declared:
            out[key] = value
            continue
        accepted = accepted_type(declared[key], seed=key == "seed" or str(key).endswith("_seed"))
        leaves = _leaf_types(accepted)
        try:
            takes_bool = any(leaf is bool or leaf is Any or isinstance(leaf, bool) for leaf in leaves)
            if isinstance(value, bool) and not takes_bool:
                raise ValueError
            result = type_adapter(accepted).validate_python(value)
        except (ValidationError, ValueError):
            if isinstance(value, str):
                hint = suggest(value, _choices(accepted))
            elif isinstance(value, bool) and (_choices(accepted) or str in leaves):
                hint = QUOTE_BOOL_TEXT
            else:
                hint = ""
            problems[key] = f"expected {_describe_type(accepted)}, got {value!r}{hint}"
            out[key] = value
            continue
        if type(result) is float and isinstance(value, int) and not isinstance(value, bool):
            result = value  # an int where a float is declared is what the user wrote and fine
        out[key] = _plain(result)
    return out, problems


# TrainingArguments keys that older transformers releases (which reference configs were written
# for) accept and newer ones renamed or dropped: old key -> (new key or None, how to translate).
LEGACY_TRAINER_ARGS: dict[str, tuple[str | None, str]] = {
    "warmup_ratio": ("warmup_steps", "a float below 1 in warmup_steps is a ratio of total steps"),
    "evaluation_strategy": ("eval_strategy", "renamed"),
    "no_cuda": ("use_cpu", "renamed"),
    "overwrite_output_dir": (None, "checkpoints are always written to a fresh folder"),
    "logging_dir": (None, "logs go under the experiment's output folder"),
    "group_by_length": (None, "set `training.group_by_length` on the experiment instead"),
}


def translate_trainer_args(args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Map reference-era TrainingArguments keys onto the installed transformers' names.

    Returns the translated arguments and one note per key that was renamed or dropped, so a
    config written for the reference pipeline trains unchanged and the user learns why.
    """
    fields = training_argument_names()
    out: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in args.items():
        if key in fields or key not in LEGACY_TRAINER_ARGS:
            out[key] = value
            continue
        new_key, why = LEGACY_TRAINER_ARGS[key]
        if new_key is None:
            notes.append(f"trainer_args.{key} is not used by this transformers release ({why})")
        elif new_key in args:
            notes.append(f"trainer_args.{key} ignored: {new_key} is also set")
        else:
            out[new_key] = value
            notes.append(f"trainer_args.{key} -> {new_key} ({why})")
    return out, notes


@lru_cache(maxsize=1)
def training_argument_types() -> dict[str, Any]:
    """The declared type of every TrainingArguments field of the installed transformers."""
    from transformers import TrainingArguments

    return _declared_types(TrainingArguments)


@lru_cache(maxsize=1)
def lora_config_types() -> dict[str, Any]:
    """The declared type of every LoraConfig field of the installed peft."""
    from peft import LoraConfig

    return _declared_types(LoraConfig)


def training_argument_names() -> frozenset[str]:
    return frozenset(training_argument_types())


def lora_config_field_names() -> frozenset[str]:
    return frozenset(lora_config_types())


@lru_cache(maxsize=1)
def lfm2_module_names() -> frozenset[str]:
    """Names LoRA can target in an LFM2 model (both layer kinds), read off transformers' own class.

    Only Linear and Embedding leaves: `conv` names both the short-convolution block and its
    depthwise kernel, which LFM2 applies by reading the weight directly, so an adapter there
    would never act (PEFT refuses the name).
    """
    import torch
    from torch import nn
    from transformers import Lfm2Config, Lfm2ForCausalLM

    config = Lfm2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, layer_types=["conv", "full_attention"],
    )
    with torch.device("meta"):
        model = Lfm2ForCausalLM(config)
    targetable = (nn.Linear, nn.Embedding)
    return frozenset(
        name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, targetable)
    )


def check_experiments(raw: Any) -> tuple[Any, list[str]]:
    """experiments.yaml against the installed transformers, peft and LFM2.

    Returns the data with every ``trainer_args`` and ``lora_args`` value converted as the
    library takes it (see :func:`coerce_library_args`), and the problems as `key.path: problem`.
    Runs on the raw YAML data so that these problems are reported together with schema errors
    in the same file, not only after those are fixed.
    """
    experiments = raw.get("experiments") if isinstance(raw, dict) else None
    if not isinstance(experiments, list):
        return raw, []
    problems = []
    trainer_fields = training_argument_types()
    # A reference-era key's value is checked as the field it is translated to.
    trainer_types = {
        **{old: trainer_fields[new] for old, (new, _) in LEGACY_TRAINER_ARGS.items() if new in trainer_fields},
        **trainer_fields,
    }
    # LoraArgs types some fields itself (ranges, LFM2 module names); the rest, `bias` and
    # `task_type` among them, are checked against the choices the installed peft declares.
    lora_types = {
        name: declared for name, declared in lora_config_types().items()
        if name not in LoraArgs.model_fields or LoraArgs.model_fields[name].annotation is str
    }
    modules = lfm2_module_names()
    seen_ids: dict[str, int] = {}
    checked = []
    for i, exp in enumerate(experiments):
        if not isinstance(exp, dict):
            checked.append(exp)
            continue
        where = f"experiments[{i}]"
        exp = dict(exp)
        base = exp.get("base")
        model_id = number_as_text(base.get("model_id")) if isinstance(base, dict) else None
        if isinstance(model_id, str):
            if model_id.lower() in seen_ids:
                problems.append(
                    f"{where}.base.model_id: {model_id!r} is already used by experiments[{seen_ids[model_id.lower()]}]"
                    " (model ids name checkpoint folders and must be unique)"
                )
            seen_ids.setdefault(model_id.lower(), i)
        trainer_args = exp.get("trainer_args")
        if isinstance(trainer_args, dict):
            for key in translate_trainer_args(trainer_args)[0]:
                if key not in trainer_fields:
                    problems.append(
                        f"{where}.trainer_args.{key}: not a TrainingArguments field of the installed "
                        f"transformers{suggest(str(key), sorted(trainer_fields))}"
                    )
            exp["trainer_args"], wrong = coerce_library_args(trainer_args, trainer_types)
            problems.extend(f"{where}.trainer_args.{key}: {problem}" for key, problem in wrong.items())
        lora_args = exp.get("lora_args")
        if isinstance(lora_args, dict):
            problems.extend(_lora_problems(where, lora_args, modules))
            exp["lora_args"], wrong = coerce_library_args(lora_args, lora_types)
            problems.extend(f"{where}.lora_args.{key}: {problem}" for key, problem in wrong.items())
        checked.append(exp)
    return {**raw, "experiments": checked}, problems


def _lora_problems(where: str, lora_args: dict[str, Any], modules: frozenset[str]) -> list[str]:
    """Unknown LoraConfig keys and `target_modules` that LFM2 does not have."""
    problems = []
    lora_fields = lora_config_field_names()
    for key in lora_args:
        if key not in lora_fields:
            problems.append(f"{where}.lora_args.{key}: not a LoraConfig field{suggest(str(key), sorted(lora_fields))}")
    targets = lora_args.get("target_modules")
    if isinstance(targets, list):
        for j, name in enumerate(targets):
            if isinstance(name, str) and name not in modules:
                problems.append(
                    f"{where}.lora_args.target_modules[{j}]: LFM2 has no module {name!r}"
                    f"{suggest(name, sorted(modules))}; it has {', '.join(sorted(modules))}"
                )
    elif isinstance(targets, str) and targets != "all-linear" and not any(
        re.fullmatch(targets, name) for name in modules
    ):
        problems.append(f"{where}.lora_args.target_modules: pattern {targets!r} matches no LFM2 module")
    return problems
