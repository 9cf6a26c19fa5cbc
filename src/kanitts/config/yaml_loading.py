"""Reading one config file: YAML as people write it, and every problem of the file itself.

PyYAML is kept (it is the loader the reference pipeline's files were written for) and fixed
where its YAML 1.1 reading would silently change a value: `5e-5` is a float as in YAML 1.2,
numbers remember the text they were typed as (a speaker `007` stays `007` where text is
expected), and a key given twice is an error instead of the last one winning. Files that are
not UTF-8, control bytes and syntax errors are named by line and column.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from kanitts.config.formatting import format_key_path
from kanitts.errors import ConfigError


class YamlInt(int):
    """An integer read from a config file, with the text it was written as (`007`, `1_000`)."""

    text = ""


class YamlFloat(float):
    """A number read from a config file, with the text it was written as (`5e-5`, `1E4`)."""

    text = ""


def number_as_text(value: Any) -> Any:
    """Where text is expected, a number keeps the characters the user typed: a speaker `007`
    or a run named `1e3` stays that text, not `7` or `1000.0`."""
    return value.text if isinstance(value, (YamlInt, YamlFloat)) and value.text else value


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as people write them and keeping what they typed.

    PyYAML implements YAML 1.1, where a float needs a dot: `5e-5` (how learning rates are
    written, in the reference pipeline's own README too) would be the *string* "5e-5" and
    fail an hour into training. Here any decimal number with an exponent, or `-.5`, is a
    float, as in YAML 1.2. Numbers come back as :class:`YamlInt` / :class:`YamlFloat`, which
    remember their text for fields that expect text.
    """


def _construct_int(loader: ConfigLoader, node: yaml.ScalarNode) -> YamlInt:
    value = YamlInt(loader.construct_yaml_int(node))
    value.text = node.value
    return value


def _construct_float(loader: ConfigLoader, node: yaml.ScalarNode) -> YamlFloat:
    value = YamlFloat(loader.construct_yaml_float(node))
    value.text = node.value
    return value


# YAML 1.2's float forms PyYAML's (1.1) pattern lacks: an exponent without a dot or without a
# sign (`5e-5`, `1E4`, `1.0e5`) and a signed leading dot (`-.5`).
_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$""",
    re.VERBOSE,
)
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
ConfigLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _line_and_column(text: str | bytes, offset: int) -> tuple[int, int]:
    newline = "\n" if isinstance(text, str) else b"\n"
    line_start = text.rfind(newline, 0, offset) + 1
    return text.count(newline, 0, offset) + 1, offset - line_start + 1


_UTF8_BOM = b"\xef\xbb\xbf"


def _decode(path: Path, data: bytes) -> str:
    """The file as text; anything but UTF-8 (a UTF-8 byte-order mark is fine) is named by byte."""
    skip = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line, column = _line_and_column(data, offset)
        raise ConfigError([(
            f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[offset]:02x} at byte offset {offset}); "
            "save the file as UTF-8"
        )]) from None


def _duplicate_keys(loader: ConfigLoader, node: yaml.Node, path: Path) -> list[str]:
    """Keys given twice in one mapping, which PyYAML resolves silently in favour of the last.

    Walks the composed node tree (before any value is built) so each problem has its key
    path and both line numbers. Merge keys (`<<: *defaults`) are meant to be overridden and
    are left out.
    """
    problems: list[str] = []
    visited: set[int] = set()

    def walk(node: yaml.Node, loc: tuple[Any, ...]) -> None:
        if id(node) in visited:  # an alias: its anchor was walked already
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*loc, index))
        elif isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = loader.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in lines:
                    where = f"twice on line {line}" if lines[key] == line else f"on lines {lines[key]} and {line}"
                    problems.append(
                        f"{path}: {format_key_path((*loc, key_node.value))}: given twice in one mapping, "
                        f"{where}; keep one (the last would silently win)"
                    )
                else:
                    lines[key] = line
                walk(value_node, (*loc, key_node.value))

    walk(node, ())
    return problems


def read_yaml(path: Path) -> Any:
    """Parse one config file; every problem of the file itself becomes a ConfigError naming it.

    Problems: not UTF-8, characters YAML forbids (control bytes), syntax errors (line and
    column) and keys given twice.
    """
    if not path.is_file():
        raise ConfigError([f"{path}: file not found"])
    data = path.read_bytes()
    text = _decode(path, data)
    try:
        loader = ConfigLoader(text)
    except yaml.reader.ReaderError as exc:
        line, column = _line_and_column(text, exc.position)
        byte = len(text[: exc.position].encode("utf-8")) + (len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0)
        kind = "control character" if unicodedata.category(chr(exc.character)) == "Cc" else "character"
        raise ConfigError([(
            f"{path}:{line}:{column}: {kind} U+{exc.character:04X} (byte offset {byte}) is not allowed "
            "in YAML; delete it (tabs and line breaks are fine)"
        )]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = _duplicate_keys(loader, node, path)
        if duplicates:
            raise ConfigError(duplicates)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{where}: YAML syntax error: {what}"]) from None
    finally:
        loader.dispose()
