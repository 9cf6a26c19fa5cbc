"""Pydantic's validation errors as the lines users read: ``<file>: <key path>: <problem>``.

One line per key, in words ("expected a positive integer, got 0"), with a did-you-mean
suggestion for unknown keys and wrong choices, since a typo is the commonest config bug. The
key path and the suggestion are read off the schema classes, so no message names a schema.
"""

from __future__ import annotations

import difflib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

# YAML 1.1 (PyYAML) reads these words unquoted as booleans: `speaker_id: no` is false.
QUOTE_BOOL_TEXT = " (unquoted yes, no, on, off, true and false are booleans in YAML: put the text in quotes)"


def format_key_path(loc: tuple[Any, ...]) -> str:
    """('experiments', 1, 'lora_args', 'r') -> 'experiments[1].lora_args.r'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def suggest(name: str, candidates: list[str]) -> str:
    """' (did you mean ...?)' for the closest candidate, or nothing when none is close."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _schema_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last key of `loc`, for did-you-mean suggestions."""
    current: Any = schema
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = _unwrap_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as `list[Experiment]` or `Filter | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _expected_number(owner: type[BaseModel] | None, key: Any, ctx: dict[str, Any]) -> str:
    """'a positive integer', 'an integer >= 0', 'a number', ... read off the field's constraints."""
    info = owner.model_fields.get(key) if owner and isinstance(key, str) else None
    annotation = repr(info.annotation) + repr(info.metadata) if info else ""
    integer = "int" in annotation
    noun = "an integer" if integer else "a number"
    if ctx.get("gt") == 0 or "gt=0" in annotation:
        return f"a positive {'integer' if integer else 'number'}"
    if "ge" in ctx:
        return f"{noun} >= {ctx['ge']}"
    return noun


def _describe(error: dict[str, Any], schema: type[BaseModel]) -> str:
    kind = error["type"]
    value = error.get("input")
    loc = error["loc"]
    owner = _schema_at(schema, loc)
    if kind == "extra_forbidden":
        known = list(owner.model_fields) if owner else []
        return f"unknown key{suggest(str(loc[-1]), known)}"
    if kind == "missing":
        return "required key is missing"
    if kind in {"greater_than", "greater_than_equal", "int_parsing", "int_type", "int_from_float",
                "float_parsing", "float_type"}:
        expected = _expected_number(owner, loc[-1] if loc else None, error.get("ctx", {}))
        return f"expected {expected}, got {value!r}"
    if kind in {"bool_parsing", "bool_type"}:
        return f"expected true or false, got {value!r}"
    if kind == "literal_error":
        hint = QUOTE_BOOL_TEXT if isinstance(value, bool) else ""
        return f"expected one of {error['ctx']['expected']}, got {value!r}{hint}"
    if kind in {"string_type"}:
        return f"expected text, got {value!r}{QUOTE_BOOL_TEXT if isinstance(value, bool) else ''}"
    if kind in {"list_type"}:
        return f"expected a list, got {value!r}"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"expected a mapping of keys, got {value!r}"
    if kind == "too_short" and not isinstance(value, str):
        return "expected at least one entry"
    if kind in {"string_too_short", "too_short"}:
        return "must not be empty (leave the key out, or use null, for none)"
    message = error["msg"]
    return message.removeprefix("Value error, ")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_union_tag(part: Any) -> bool:
    """Pydantic names the union member an error came from inside `loc` ('list[str]', 'int', ...)."""
    return isinstance(part, str) and (not part.isidentifier() or part in _TYPE_TAGS)


def validation_problems(filename: str, schema: type[BaseModel], exc: ValidationError) -> list[str]:
    """One `file: key.path: problem` line per key; a union's members would report one each."""
    problems = []
    seen: set[tuple[Any, ...]] = set()
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
        if loc in seen:
            continue
        seen.add(loc)
        problems.append(f"{filename}: {format_key_path(loc)}: {_describe({**error, 'loc': loc}, schema)}")
    return problems
