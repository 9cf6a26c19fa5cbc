"""The checks of a codec dataset's columns, run before any row is processed.

A wrong column name or type found here costs a second and names the dataset, the column and the
config key; found in a worker process, it would cost a traceback after minutes of work.
"""

from __future__ import annotations

from typing import Any

import datasets
import pyarrow as pa

from kanitts.config import DatasetEntry, suggest
from kanitts.config.schemas.model import SPEAKER_EMB_COLUMN


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
        if entry.speaker_emb is not None:
            key = "speaker_emb"
        elif embedding_column == SPEAKER_EMB_COLUMN:
            key = "the speaker embedding of kanitts prepare --speaker-embedder"
        else:
            key = "the codec's global embedding"
        wanted[key] = (embedding_column, "float_list")
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


#: the record ``kanitts prepare`` writes in each dataset folder (kanitts.prepare.shards.SUMMARY_NAME;
#: a test keeps the two equal, the layers keep prepare and sequences apart)
PREPARE_RECORD = "kanitts_prepare.json"


def codec_problems(entry: DatasetEntry, codec: Any) -> list[str]:
    """Where the codec a dataset folder was prepared with disagrees with model_config.yaml's codec
    section: its frame rate sets every duration (``max_duration_sec``, audio seconds), so a 25 Hz
    Kanade dataset read as 12.5 Hz would be filtered and summed at twice its length."""
    import json
    from pathlib import Path

    record = Path(entry.reponame).expanduser() / PREPARE_RECORD
    try:
        prepared = json.loads(record.read_text(encoding="utf-8"))["manifest"]["codec"]
    except (OSError, ValueError, KeyError, TypeError):  # not prepared here, or an older record: nothing to compare
        return []
    problems = []
    if prepared.get("kind") not in (None, codec.kind):
        problems.append(f"codec.kind is {codec.kind}, the data was encoded with {prepared['kind']}")
    rate = prepared.get("frame_rate")
    if isinstance(rate, (int, float)) and abs(float(rate) - float(codec.fps)) > 1e-6:
        problems.append(f"codec.fps is {codec.fps:g}, the data's codec makes {float(rate):g} frames per second")
    return [
        f"dataset {entry.label}: {p} ({record}); set model_config.yaml codec to the codec it was prepared with"
        for p in problems
    ]
