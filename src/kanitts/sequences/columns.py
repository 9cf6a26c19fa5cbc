"""The checks of a codec dataset's columns, run before any row is processed.

A wrong column name or type found here costs a second and names the dataset, the column and the
config key; found in a worker process, it would cost a traceback after minutes of work.
"""

from __future__ import annotations

import datasets
import pyarrow as pa

from kanitts.config import DatasetEntry, suggest


def rename_problems(entry: DatasetEntry, codec_layers: list[str]) -> list[str]:
    """Column keys of a dataset entry that name no codebook of the codec (model_config.yaml codec_layers)."""
    return [
        f"dataset {entry.label}: {key} names no codebook of the codec; model_config.yaml codec_layers: {codec_layers}"
        for key in entry.column_renames()
        if key not in codec_layers
    ]


def column_problems(
    entry: DatasetEntry, source: datasets.Dataset, codec_layers: list[str], embedding_column: str | None = None
) -> list[str]:
    """Missing or mistyped columns of one dataset, each naming the dataset, the column and the key.

    ``embedding_column`` is the codec's per-clip global embedding (Kanade's ``global_embedding``,
    which ``kanitts prepare`` writes), required when the codec has one.
    """
    renamed_generically = set(entry.codebook_columns)
    wanted = {
        "text_col_name": (entry.text_col_name, "text"),
        "encoded_len": (entry.encoded_len, "int"),
        **{
            (f"codebook_columns.{name}" if name in renamed_generically else name): (column, "int_list")
            for name, column in zip(codec_layers, entry.layer_columns(codec_layers))
        },
    }
    if entry.categorical_filter is not None:
        wanted["categorical_filter.column_name"] = (entry.categorical_filter.column_name, "any")
    if embedding_column is not None:
        wanted["the codec's global embedding"] = (embedding_column, "float_list")
    columns = source.column_names
    problems = []
    for key, (column, kind) in wanted.items():
        if column not in columns:
            problems.append(
                f"dataset {entry.label}: column {column!r} ({key}) not found{suggest(column, columns)}; "
                f"it has columns {columns}"
            )
            continue
        arrow_type = source.data.schema.field(column).type
        if not _has_kind(arrow_type, kind):
            expected = {
                "text": "text", "int": "integers", "int_list": "lists of integer codes",
                "float_list": "lists of numbers (one embedding per clip, as kanitts prepare writes)",
            }[kind]
            problems.append(f"dataset {entry.label}: column {column!r} ({key}) holds {arrow_type}, expected {expected}")
    return problems


def _has_kind(arrow_type: pa.DataType, kind: str) -> bool:
    if kind == "text":
        return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    if kind == "int":
        return pa.types.is_integer(arrow_type)
    if kind == "int_list":
        return (
            pa.types.is_list(arrow_type)
            or pa.types.is_large_list(arrow_type)
            or pa.types.is_fixed_size_list(arrow_type)
        ) and pa.types.is_integer(arrow_type.value_type)
    if kind == "float_list":
        return (
            pa.types.is_list(arrow_type)
            or pa.types.is_large_list(arrow_type)
            or pa.types.is_fixed_size_list(arrow_type)
        ) and (pa.types.is_floating(arrow_type.value_type) or pa.types.is_integer(arrow_type.value_type))
    return True
